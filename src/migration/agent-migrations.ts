/**
 * An agent's side of live migrations (docs/cluster.md "Live migration", steps 3-6): the target's incoming VM
 * (identity from the dossier, disks, a jailed QEMU waiting with `-incoming defer`, QEMU's TLS with this migration's
 * throwaway certificate, relays from the agent's cluster address), the source's outgoing run, and the switchover
 * each side does by itself — the target resumes its VM on QEMU's `completed`, the source then lets its copy go —
 * so a manager that dies mid-migration changes nothing. Everything a migration made is undone on every failure.
 */
import { rmSync } from "node:fs";
import { isIP } from "node:net";
import { join } from "node:path";
import { z } from "zod";
import type { RequestContext } from "../auth/guard.ts";
import { AgentClient } from "../cluster/agent-client.ts";
import { qemuTlsIdentity, writeQemuCredsDir } from "../cluster/ca.ts";
import type { CertBundle, MigrationProgress, MigrationResult } from "../cluster/types.ts";
import { VigilError, messageOf, q } from "../errors.ts";
import { vmLayout } from "../paths.ts";
import { parseOrThrow } from "../validation.ts";
import { jailUidOf } from "../vm/jail-uids.ts";
import { prepareIncomingDisks } from "./disks.ts";
import { applyStore, exportDossier, exportStore, importDossier, type Dossier, type DossierDeps } from "./dossier.ts";
import { finishIncoming, prepareIncoming, watchIncoming } from "./incoming.ts";
import type { IncomingAnswer, OutgoingStatus } from "./orchestrator.ts";
import { runOutgoing } from "./precopy.ts";
import type { QemuReport } from "./negotiate.ts";
import { probeQemu, readReport } from "./qemu-report.ts";
import { ColdMoves } from "./cold-agents.ts";
import { limitsSchema, outgoingDiskSchema, tlsHostnameSchema } from "./qmp-info.ts";
import { tcpToUnix, unixToTcp, type Relay } from "./relay.ts";

export interface AgentMigrationDeps extends DossierDeps {
  /** The agent's cluster address: where the target's relays listen. */
  clusterHost: string;
  /** This agent's own certificate: the source uses it to hand the switchover state to the target agent. */
  credentials: CertBundle;
}

const idSchema = z.string().regex(/^[a-z0-9](?:[a-z0-9-]{0,56}[a-z0-9])?$/, "must be a migration id (lower-case letters, digits, -)");
const pem = z.string().min(1).max(16_384);
const bundleSchema = z.strictObject({ caPem: pem, certPem: pem, keyPem: pem });
const ipSchema = z.string().refine((s) => isIP(s) !== 0, "must be an IP address");

const incomingSchema = z.strictObject({
  id: idSchema,
  dossier: z.unknown(),
  credentials: bundleSchema,
  /** The source certificate's subject, for QEMU's authz: the only client the target's QEMU accepts. */
  peerSubject: z.string().regex(/^O=vigil,OU=migration,CN=[a-z0-9-]{1,64}$/),
  sourceAddress: ipSchema,
  /** The source agent's name: the only agent that may hand over this VM's switchover state. */
  sourceHost: z.string().min(1).max(64),
});

const outgoingSchema = z.strictObject({
  id: idSchema,
  vm: z.string().regex(/^[a-z][a-z0-9-]{0,62}$/),
  target: z.strictObject({ host: z.string().min(1).max(64), address: ipSchema, agent: z.string().min(3).max(64), ramPort: z.number().int().min(1).max(65535), nbdPort: z.number().int().min(1).max(65535) }),
  tlsHostname: tlsHostnameSchema,
  credentials: bundleSchema,
  disks: z.array(outgoingDiskSchema).max(16),
  limits: limitsSchema,
  /** The negotiated capabilities (negotiate.ts); absent from an older manager: the engine's default set. */
  capabilities: z.array(z.string().regex(/^[a-z][a-z0-9-]{0,40}$/)).max(32).optional(),
});

interface Outgoing {
  id: string;
  vmId: string;
  phase: MigrationProgress["phase"];
  progress: MigrationProgress | null;
  result: MigrationResult | null;
  error: string | null;
  abort: AbortController;
  done: Promise<void>;
}

interface Incoming {
  id: string;
  vmId: string;
  sourceHost: string;
  vmName: string;
  state: "incoming" | "running" | "aborted";
  error: string | null;
  abort: AbortController;
  done: Promise<void>;
}

/** Finished migrations are remembered this long, so a manager that restarts can still ask how they ended. */
const REMEMBER_MS = 60 * 60_000;

export class AgentMigrations {
  private readonly outgoing = new Map<string, Outgoing>();
  private readonly incoming = new Map<string, Incoming>();

  /** Stopped VMs moving between agents (cold-agents.ts). */
  readonly cold: ColdMoves;

  /** This host's QEMU binary, probed once (negotiation, target side). */
  private probed: Promise<QemuReport> | undefined;

  constructor(private readonly d: AgentMigrationDeps) {
    this.cold = new ColdMoves(d);
  }

  /** Target: what this host's QEMU can do (docs/cluster.md "Negotiation"). A failed probe is tried again next time. */
  hostQemu(): Promise<QemuReport> {
    this.probed ??= probeQemu(this.d.hostName).catch((err: unknown) => {
      this.probed = undefined;
      throw err;
    });
    return this.probed;
  }

  /** Source: what the VM's own running QEMU can do, and its hardware (a stopped VM: this host's binary). */
  async vmQemu(ctx: RequestContext, vmName: string): Promise<{ qemu: QemuReport; hardware: { machine: string; cpu: string }; state: string }> {
    const vm = await this.d.vms.lookup(ctx, vmName, "vm.migrate-out");
    const hardware = { machine: vm.spec.machine, cpu: vm.spec.cpu };
    if (vm.state !== "running" && vm.state !== "paused") return { qemu: { ...(await this.hostQemu()), machines: [hardware.machine] }, hardware, state: vm.state };
    const qmp = this.d.vms.runtimeOf(vm).qmp;
    const qemu = await readReport(this.d.hostName, (c, a) => qmp.execute(c, a, { timeoutMs: 10_000 }), { machines: false, cpus: false });
    return { qemu: { ...qemu, machines: [hardware.machine] }, hardware, state: vm.state };
  }

  /** The VM's dossier, for the manager to hand to the target (`vm.migrate` on the VM). */
  dossier(ctx: RequestContext, vmName: string): Promise<Dossier> {
    return exportDossier(this.d, ctx, vmName);
  }

  /** Target: takes the VM in, starts its QEMU waiting for the stream, and opens the relays. */
  async prepareIn(ctx: RequestContext, body: unknown): Promise<IncomingAnswer> {
    const req = parseOrThrow(incomingSchema, body, "incoming", "VIGIL_BAD_REQUEST");
    if (this.incoming.has(req.id) || this.outgoing.has(req.id)) throw new VigilError("VIGIL_CONFLICT", `Migration ${q(req.id)} is already known here`, { field: "id" });
    const imported = await importDossier(this.d, req.dossier, ctx);
    const vmId = imported.vm.id;
    const l = vmLayout(this.d.vmsDir, vmId);
    const tlsDir = join(l.runDir, "mig-tls");
    const relays: Relay[] = [];
    try {
      const disks = await prepareIncomingDisks(this.d, vmId, imported.disks);
      const vm = await this.d.vms.startIncoming(ctx, vmId);
      writeQemuCredsDir(tlsDir, req.credentials as CertBundle, "server", await jailUidOf(this.d.db, vmId));
      const qmp = this.d.vms.runtimeOf(vm).qmp;
      const ramSock = join(l.runDir, "mig-in.sock");
      const nbdSock = join(l.runDir, "nbd-in.sock");
      await prepareIncoming(qmp, { tlsDir, authzIdentity: req.peerSubject, migrateSocket: ramSock, nbdSocket: nbdSock, disks: disks.map((x) => ({ node: x.node, exportName: x.exportName })) });
      relays.push(await tcpToUnix(this.d.clusterHost, ramSock, req.sourceAddress), await tcpToUnix(this.d.clusterHost, nbdSock, req.sourceAddress));
      const entry: Incoming = { id: req.id, vmId, sourceHost: req.sourceHost, vmName: vm.name, state: "incoming", error: null, abort: new AbortController(), done: Promise.resolve() };
      entry.done = this.followIn(entry, qmp, relays, tlsDir);
      this.incoming.set(req.id, entry);
      return { ramPort: relays[0]!.port, nbdPort: relays[1]!.port, disks: disks.map((x) => ({ node: x.node, exportName: x.exportName, sync: x.sync })) };
    } catch (err) {
      await Promise.all(relays.map((r) => r.close()));
      await this.d.vms.abortIncoming(vmId, ctx, messageOf(err)).catch((e: unknown) => this.d.log.error({ vm: vmId, err: messageOf(e) }, "cannot remove the incoming VM after a failed preparation"));
      throw err;
    }
  }

  /** Target: waits for QEMU's `completed`, then resumes the VM (no manager needed); aborts on failure. */
  private async followIn(entry: Incoming, qmp: Parameters<typeof finishIncoming>[0], relays: Relay[], tlsDir: string): Promise<void> {
    try {
      await watchIncoming(qmp, entry.abort.signal, { timeoutMs: 24 * 3600_000 });
      await finishIncoming(qmp);
      await this.d.vms.commitIncoming(entry.vmId, undefined, { migration: entry.id });
      entry.state = "running";
    } catch (err) {
      entry.state = "aborted";
      entry.error = messageOf(err);
      await this.d.vms.abortIncoming(entry.vmId, undefined, `migration ${entry.id}: ${entry.error}`).catch((e: unknown) => this.d.log.error({ vm: entry.vmId, err: messageOf(e) }, "cannot remove the incoming VM"));
    } finally {
      await Promise.all(relays.map((r) => r.close()));
      rmSync(tlsDir, { recursive: true, force: true });
      this.forgetLater(this.incoming, entry.id);
    }
  }

  /**
   * Target, called by the SOURCE agent (its own certificate, not the manager's) at pre-switchover: the VM's
   * monotonic store as it is with the guest paused. Only the agent the migration comes from may send it.
   */
  async acceptStore(peerHost: string, id: string, body: unknown): Promise<{ applied: true }> {
    const entry = this.incoming.get(id);
    if (!entry || entry.state !== "incoming") throw new VigilError("VIGIL_NOT_FOUND", `No incoming migration ${q(id)} here`);
    if (entry.sourceHost !== peerHost) throw new VigilError("VIGIL_FORBIDDEN", `Agent ${q(peerHost)} is not the source of migration ${q(id)}`);
    await applyStore(this.d, entry.vmId, body);
    return { applied: true };
  }

  /** Target: gives the incoming VM up (the source failed or was cancelled). Idempotent. */
  async abortIn(id: string): Promise<{ state: string }> {
    const entry = this.incoming.get(id);
    if (!entry) throw new VigilError("VIGIL_NOT_FOUND", `No incoming migration ${q(id)} here`);
    if (entry.state === "incoming") entry.abort.abort(new VigilError("VIGIL_CONFLICT", "aborted by the manager"));
    await entry.done;
    return { state: entry.state };
  }

  /** Source: starts the outgoing run in the background; `status` follows it. */
  async startOut(ctx: RequestContext, body: unknown): Promise<{ id: string }> {
    const req = parseOrThrow(outgoingSchema, body, "outgoing", "VIGIL_BAD_REQUEST");
    if (this.outgoing.has(req.id) || this.incoming.has(req.id)) throw new VigilError("VIGIL_CONFLICT", `Migration ${q(req.id)} is already known here`, { field: "id" });
    const vm = await this.d.vms.lookup(ctx, req.vm, "vm.migrate-out");
    return this.d.guard.run(ctx, { action: "vm.migrate-out", permission: "vm.migrate", target: { kind: "vm", id: vm.id, name: vm.name }, owner: vm.owner, details: { migration: req.id, to: req.target.host } }, async () => {
      if (vm.state !== "running") throw new VigilError("VIGIL_INVALID_STATE", `Cannot migrate VM ${q(vm.name)} live: it is ${vm.state}, not running`);
      const qmp = this.d.vms.runtimeOf(vm).qmp;
      const l = vmLayout(this.d.vmsDir, vm.id);
      const uid = await jailUidOf(this.d.db, vm.id);
      const tlsDir = join(l.runDir, "mig-tls-out");
      const relays: Relay[] = [];
      try {
        // The target's QEMU checks this certificate's subject (authz); the manager named it — check we agree.
        qemuTlsIdentity(req.credentials.certPem);
        writeQemuCredsDir(tlsDir, req.credentials as CertBundle, "client", uid);
        relays.push(await unixToTcp(join(l.runDir, "mig-out.sock"), uid, req.target.address, req.target.ramPort));
        relays.push(await unixToTcp(join(l.runDir, "nbd-out.sock"), uid, req.target.address, req.target.nbdPort));
      } catch (err) {
        await Promise.all(relays.map((r) => r.close()));
        rmSync(tlsDir, { recursive: true, force: true });
        throw err;
      }
      const entry: Outgoing = { id: req.id, vmId: vm.id, phase: "setup", progress: null, result: null, error: null, abort: new AbortController(), done: Promise.resolve() };
      const timeout = setTimeout(() => entry.abort.abort(new VigilError("VIGIL_TIMEOUT", `the migration took longer than ${req.limits.timeoutMs} ms`)), req.limits.timeoutMs);
      entry.done = runOutgoing(qmp, {
        tlsDir,
        tlsHostname: req.tlsHostname,
        migrateSocket: relays[0]!.where,
        nbdSocket: relays[1]!.where,
        disks: req.disks,
        limits: req.limits,
        ...(req.capabilities ? { capabilities: req.capabilities } : {}),
        signal: entry.abort.signal,
        onProgress: (p) => {
          entry.phase = p.phase;
          entry.progress = p;
        },
        // The guest is paused: its monotonic store is final now. The target agent stores it before QEMU switches
        // over, so the VM never reads an older value there (a failure here aborts; the VM resumes here).
        beforeSwitchover: async () => {
          const store = await exportStore(this.d, vm.id);
          const peer = new AgentClient({ address: req.target.agent, agentName: req.target.host, bundle: this.d.credentials });
          try {
            await peer.request("POST", `/v1/agent/migrations/${req.id}/store`, { body: store, timeoutMs: 15_000 });
          } finally {
            peer.close();
          }
        },
      })
        .then(async (result) => {
          entry.result = result;
          // QEMU says the target has everything; the target resumes it by itself. Let this copy go.
          await this.d.vms.releaseOutgoing(vm.id, req.target.host, ctx, { migration: req.id, downtimeMs: result.downtimeMs, totalMs: result.totalMs });
          entry.phase = "completed";
        })
        .catch((err: unknown) => {
          entry.phase = entry.abort.signal.aborted && !(entry.abort.signal.reason instanceof VigilError && entry.abort.signal.reason.code === "VIGIL_TIMEOUT") ? "cancelled" : "failed";
          entry.error = messageOf(entry.abort.signal.reason ?? err);
          this.d.log.warn({ migration: req.id, vm: vm.name, err: entry.error }, "outgoing migration ended without moving the VM; it keeps running here");
        })
        .finally(async () => {
          clearTimeout(timeout);
          await Promise.all(relays.map((r) => r.close()));
          rmSync(tlsDir, { recursive: true, force: true });
          this.forgetLater(this.outgoing, req.id);
        });
      this.outgoing.set(req.id, entry);
      return { id: req.id };
    });
  }

  /** How a migration is going here: the source's progress, or the target's state. */
  status(id: string): OutgoingStatus & { side: "source" | "target"; state?: string } {
    const out = this.outgoing.get(id);
    if (out) return { side: "source", id, phase: out.phase, progress: out.progress, result: out.result, error: out.error };
    const inc = this.incoming.get(id);
    if (inc) return { side: "target", id, phase: inc.state === "running" ? "completed" : inc.state === "aborted" ? "failed" : "ram", progress: null, result: null, error: inc.error, state: inc.state };
    throw new VigilError("VIGIL_NOT_FOUND", `No migration ${q(id)} here`);
  }

  /** Source: cancel; the VM keeps running here. */
  async cancel(id: string): Promise<OutgoingStatus> {
    const out = this.outgoing.get(id);
    if (!out) throw new VigilError("VIGIL_NOT_FOUND", `No outgoing migration ${q(id)} here`);
    out.abort.abort(new VigilError("VIGIL_CONFLICT", "cancelled"));
    await out.done;
    return this.status(id);
  }

  /** Daemon shutdown: outgoing runs are cancelled (their VMs stay here), incoming ones given up. */
  async close(): Promise<void> {
    for (const o of this.outgoing.values()) o.abort.abort(new VigilError("VIGIL_CONFLICT", "the agent is stopping"));
    for (const i of this.incoming.values()) if (i.state === "incoming") i.abort.abort(new VigilError("VIGIL_CONFLICT", "the agent is stopping"));
    await Promise.all([...this.outgoing.values(), ...this.incoming.values()].map((e) => e.done.catch(() => undefined)));
  }

  private forgetLater(map: Map<string, unknown>, id: string): void {
    setTimeout(() => map.delete(id), REMEMBER_MS).unref();
  }
}
