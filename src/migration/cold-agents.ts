/**
 * A stopped VM moving between two agents (docs/cluster.md "Moving a stopped VM"): the same steps as `moveStopped`
 * (cold.ts) with the manager driving them on two hosts. The target imports the dossier (`incoming`); the source
 * pushes each disk to the target agent over the agents' mutual TLS (its own certificate, the only agent the target
 * takes disks from for that move): the top layer when the target has the same base, else the whole disk flattened.
 * The target never trusts what arrives: the upload is bounded, must be a plain qcow2 without an external data
 * file, has its backing reference rewritten to its own copy of the base (or removed), and is then converted into
 * place by `copyDiskIn`. The target commits it `stopped`; only then does the source let go. Every failure before
 * the commit aborts the incoming VM; a failed release discards the target's copy again.
 */
import { X509Certificate } from "node:crypto";
import { createReadStream, createWriteStream, rmSync, statSync } from "node:fs";
import { request as httpsRequest } from "node:https";
import { join } from "node:path";
import { Readable, Transform } from "node:stream";
import { pipeline } from "node:stream/promises";
import { z } from "zod";
import type { RequestContext } from "../auth/guard.ts";
import { parseAddress } from "../cluster/agent-client.ts";
import { subjectOf } from "../cluster/ca.ts";
import { VigilError, messageOf, q } from "../errors.ts";
import { ensurePrivateDir } from "../host/private-dir.ts";
import { vmLayout } from "../paths.ts";
import { QEMU_IMG, imageInfo } from "../qemu/qemu-img.ts";
import { runCommand } from "../util/run-command.ts";
import { parseOrThrow } from "../validation.ts";
import { diskFile } from "../vm/vm-view.ts";
import type { AgentMigrationDeps } from "./agent-migrations.ts";
import { copyDiskIn } from "./disks.ts";
import { importDossier, type IncomingDiskPlan } from "./dossier.ts";
import type { VmRecord } from "../vm/vm-repository.ts";

const idSchema = z.string().regex(/^[a-z0-9](?:[a-z0-9-]{0,56}[a-z0-9])?$/, "must be a migration id (lower-case letters, digits, -)");
const diskName = z.string().regex(/^[a-z][a-z0-9]{0,15}$/, "must be a disk name");
const hostName = z.string().min(1).max(64);
const coldInSchema = z.strictObject({ id: idSchema, dossier: z.unknown(), sourceHost: hostName });
const coldOutSchema = z.strictObject({
  id: idSchema,
  vm: z.string().regex(/^[a-z][a-z0-9-]{0,62}$/),
  target: z.strictObject({ host: hostName, agent: z.string().min(3).max(64) }),
  disks: z.array(z.strictObject({ name: diskName, sync: z.enum(["top", "full"]) })).max(16),
});

export interface ColdStatus {
  id: string;
  phase: "disks" | "completed" | "failed";
  diskDone: number;
  diskTotal: number;
  error: string | null;
}

interface ColdIn {
  id: string;
  vmId: string;
  sourceHost: string;
  plans: IncomingDiskPlan[];
  received: Map<string, "top" | "full">;
  committed: boolean;
}

interface ColdOut extends ColdStatus {
  vmId: string;
  target: string;
  done: Promise<void>;
}

/** An upload may be at most this much larger than the disk's virtual size (qcow2 metadata). */
const UPLOAD_SLACK = (virtualSize: number) => Math.ceil(virtualSize * 0.25) + 64 * 2 ** 20;
const REMEMBER_MS = 60 * 60_000;

export class ColdMoves {
  private readonly incoming = new Map<string, ColdIn>();
  private readonly outgoing = new Map<string, ColdOut>();

  constructor(private readonly d: AgentMigrationDeps) {}

  /** Target: imports the dossier as `incoming`; answers how each disk should come (top layer or whole). */
  async prepareIn(ctx: RequestContext, body: unknown): Promise<{ disks: { name: string; sync: "top" | "full"; virtualSize: number }[] }> {
    const req = parseOrThrow(coldInSchema, body, "cold move", "VIGIL_BAD_REQUEST");
    if (this.incoming.has(req.id)) throw new VigilError("VIGIL_CONFLICT", `Move ${q(req.id)} is already known here`, { field: "id" });
    const imported = await importDossier(this.d, req.dossier, ctx);
    if (imported.vm.state !== "incoming") throw new VigilError("VIGIL_INVALID_STATE", `VM ${q(imported.vm.name)} is not incoming here`);
    this.incoming.set(req.id, { id: req.id, vmId: imported.vm.id, sourceHost: req.sourceHost, plans: imported.disks, received: new Map(), committed: false });
    return { disks: imported.disks.map((p) => ({ name: p.name, sync: p.base !== undefined ? "top" : "full", virtualSize: p.virtualSize })) };
  }

  /** Target, called by the SOURCE agent: one disk's image, streamed. Checked, re-based onto our base, converted in. */
  async acceptDisk(peerHost: string, id: string, name: string, body: ReadableStream<Uint8Array> | null): Promise<{ name: string; sync: "top" | "full" }> {
    const entry = this.incoming.get(id);
    if (!entry || entry.committed) throw new VigilError("VIGIL_NOT_FOUND", `No incoming cold move ${q(id)} here`);
    if (entry.sourceHost !== peerHost) throw new VigilError("VIGIL_FORBIDDEN", `Agent ${q(peerHost)} is not the source of move ${q(id)}`);
    const plan = entry.plans.find((p) => p.name === name);
    if (!plan) throw new VigilError("VIGIL_BAD_REQUEST", `VM of move ${q(id)} has no disk ${q(name)}`, { field: "disk" });
    if (entry.received.has(name)) throw new VigilError("VIGIL_CONFLICT", `Disk ${q(name)} of move ${q(id)} has arrived already`, { field: "disk" });
    if (!body) throw new VigilError("VIGIL_BAD_REQUEST", "The disk upload has no body", { field: "body" });
    const l = vmLayout(this.d.vmsDir, entry.vmId);
    ensurePrivateDir(this.d.vmsDir);
    ensurePrivateDir(l.dir);
    const tmp = join(l.dir, `upload-${name}.qcow2`);
    try {
      const cap = plan.virtualSize + UPLOAD_SLACK(plan.virtualSize);
      let size = 0;
      const bound = new Transform({
        transform(chunk: Buffer, _enc, cb) {
          size += chunk.length;
          cb(size > cap ? new VigilError("VIGIL_BAD_REQUEST", `The upload of disk ${q(name)} is larger than ${cap} bytes`, { field: "body" }) : null, chunk);
        },
      });
      await pipeline(Readable.fromWeb(body as Parameters<typeof Readable.fromWeb>[0]), bound, createWriteStream(tmp, { mode: 0o600, flags: "wx" }));
      const info = await imageInfo(tmp, { format: "qcow2" });
      const specific = JSON.stringify((info as Record<string, unknown>)["format-specific"] ?? {});
      if (/"data-file"/.test(specific)) throw new VigilError("VIGIL_BAD_REQUEST", `The upload of disk ${q(name)} names an external data file`, { field: "body" });
      if (info["virtual-size"] !== plan.virtualSize) throw new VigilError("VIGIL_BAD_REQUEST", `The upload of disk ${q(name)} is ${info["virtual-size"]} bytes, not the dossier's ${plan.virtualSize}`, { field: "body" });
      // Whatever backing the image names is the source's path: ours replaces it (or none, for a whole disk).
      await runCommand(QEMU_IMG, ["rebase", "-q", "-u", "-f", "qcow2", ...(plan.base !== undefined ? ["-F", "qcow2", "-b", plan.base] : ["-b", ""]), tmp], { what: `Re-basing disk ${q(name)}` });
      const disk = await copyDiskIn(this.d, entry.vmId, plan, tmp);
      entry.received.set(name, disk.sync);
      return { name, sync: disk.sync };
    } finally {
      rmSync(tmp, { force: true });
    }
  }

  /** Target: every disk has arrived; the VM is stored `stopped` here. */
  async commit(ctx: RequestContext, id: string): Promise<{ owner: string; state: string }> {
    const entry = this.incoming.get(id);
    if (!entry || entry.committed) throw new VigilError("VIGIL_NOT_FOUND", `No incoming cold move ${q(id)} here`);
    const missing = entry.plans.filter((p) => !entry.received.has(p.name)).map((p) => p.name);
    if (missing.length > 0) throw new VigilError("VIGIL_CONFLICT", `Cannot commit move ${q(id)}: disk ${missing.map((m) => q(m)).join(", ")} has not arrived`);
    const vm = await this.d.vms.commitStopped(entry.vmId, ctx, { from: entry.sourceHost, migration: id, disks: [...entry.received].map(([name, sync]) => ({ name, sync })) });
    entry.committed = true;
    setTimeout(() => this.incoming.delete(id), REMEMBER_MS).unref();
    return { owner: vm.owner, state: vm.state };
  }

  /** Target: gives the VM up — the incoming one, or the committed copy when the source could not let go. */
  async abort(ctx: RequestContext, id: string, reason: string): Promise<{ state: "aborted" }> {
    const entry = this.incoming.get(id);
    if (!entry) throw new VigilError("VIGIL_NOT_FOUND", `No incoming cold move ${q(id)} here`);
    this.incoming.delete(id);
    if (entry.committed) await this.d.vms.discardArrived(entry.vmId, ctx, reason);
    else await this.d.vms.abortIncoming(entry.vmId, ctx, reason);
    return { state: "aborted" };
  }

  /** Source: pushes the stopped VM's disks to the target agent in the background; `status` follows it. */
  async startOut(ctx: RequestContext, body: unknown): Promise<{ id: string }> {
    const req = parseOrThrow(coldOutSchema, body, "cold move", "VIGIL_BAD_REQUEST");
    if (this.outgoing.has(req.id)) throw new VigilError("VIGIL_CONFLICT", `Move ${q(req.id)} is already known here`, { field: "id" });
    const vm = await this.d.vms.lookup(ctx, req.vm, "vm.migrate-out");
    return this.d.guard.run(ctx, { action: "vm.migrate-out", permission: "vm.migrate", target: { kind: "vm", id: vm.id, name: vm.name }, owner: vm.owner, details: { migration: req.id, to: req.target.host, how: "cold" } }, () => this.pushDisks(vm, req));
  }

  private async pushDisks(vm: VmRecord, req: z.output<typeof coldOutSchema>): Promise<{ id: string }> {
    if (vm.state !== "stopped" && vm.state !== "crashed") throw new VigilError("VIGIL_INVALID_STATE", `Cannot move VM ${q(vm.name)} cold: it is ${vm.state} (a running VM moves live)`);
    const l = vmLayout(this.d.vmsDir, vm.id);
    for (const disk of req.disks) if (!vm.spec.disks.some((s) => s.name === disk.name)) throw new VigilError("VIGIL_BAD_REQUEST", `VM ${q(vm.name)} has no disk ${q(disk.name)}`, { field: "disks" });
    const files = req.disks.map((disk) => ({ ...disk, file: diskFile(l.disksDir, disk.name) }));
    const entry: ColdOut = { id: req.id, vmId: vm.id, target: req.target.host, phase: "disks", diskDone: 0, diskTotal: files.reduce((s, f) => s + statSync(f.file).size, 0), error: null, done: Promise.resolve() };
    entry.done = (async () => {
      for (const f of files) {
        let send = f.file;
        if (f.sync === "full") {
          // The target lacks the base: the disk flattened with its chain, written next to it and sent, then removed.
          send = join(l.dir, `flat-${f.name}.qcow2`);
          rmSync(send, { force: true });
          await runCommand(QEMU_IMG, ["convert", "-q", "-f", "qcow2", "-O", "qcow2", f.file, send], { what: `Flattening disk ${q(f.name)}`, timeoutMs: 60 * 60_000 });
          entry.diskTotal += statSync(send).size - statSync(f.file).size;
        }
        try {
          await putFile(this.d, req.target, `/v1/agent/cold/${req.id}/disks/${f.name}`, send, (n) => (entry.diskDone += n));
        } finally {
          if (send !== f.file) rmSync(send, { force: true });
        }
      }
      const now = await this.d.vms.recordById(vm.id);
      if (now.state !== "stopped" && now.state !== "crashed") throw new VigilError("VIGIL_INVALID_STATE", `VM ${q(vm.name)} was ${now.state} here during the copy`);
      entry.phase = "completed";
    })().catch((err: unknown) => {
      entry.phase = "failed";
      entry.error = messageOf(err);
    });
    this.outgoing.set(req.id, entry);
    setTimeout(() => this.outgoing.delete(req.id), REMEMBER_MS).unref();
    return { id: req.id };
  }

  status(id: string): ColdStatus {
    const e = this.outgoing.get(id);
    if (!e) throw new VigilError("VIGIL_NOT_FOUND", `No outgoing cold move ${q(id)} here`);
    return { id, phase: e.phase, diskDone: e.diskDone, diskTotal: e.diskTotal, error: e.error };
  }

  /** Source: the target has committed the VM; this host lets go of it. */
  async release(ctx: RequestContext, id: string): Promise<{ released: true }> {
    const e = this.outgoing.get(id);
    if (!e || e.phase !== "completed") throw new VigilError("VIGIL_CONFLICT", `Move ${q(id)} has not finished copying here`);
    await this.d.vms.releaseOutgoing(e.vmId, e.target, ctx, { how: "cold", migration: id });
    return { released: true };
  }
}

/** PUT of one file to the target agent, with this agent's certificate; the target must be the agent named. */
async function putFile(d: AgentMigrationDeps, target: { host: string; agent: string }, path: string, file: string, onBytes: (n: number) => void): Promise<void> {
  const { host, port } = parseAddress(target.agent);
  const size = statSync(file).size;
  await new Promise<void>((resolve, reject) => {
    const req = httpsRequest({
      host, port, method: "PUT", path,
      headers: { "content-type": "application/octet-stream", "content-length": String(size) },
      ca: [d.credentials.caPem], cert: d.credentials.certPem, key: d.credentials.keyPem, minVersion: "TLSv1.3", rejectUnauthorized: true, agent: false,
      checkServerIdentity: (_h, peer) => {
        const { role, name } = subjectOf(new X509Certificate(peer.raw));
        return role === "agent" && name === target.host ? undefined : new Error(`the agent at ${target.agent} is ${role} ${name}, not agent ${target.host}`);
      },
      timeout: 60_000,
    });
    req.on("timeout", () => req.destroy(new VigilError("VIGIL_TIMEOUT", `The target agent ${q(target.host)} stopped taking the disk`)));
    req.on("error", (err) => reject(new VigilError("VIGIL_HOST", `Cannot send a disk to ${q(target.host)}: ${messageOf(err)}`, { cause: err })));
    req.on("response", (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.length < 64 && chunks.push(c));
      res.on("end", () => {
        if (res.statusCode === 200) return resolve();
        let msg = Buffer.concat(chunks).toString("utf8").slice(0, 500);
        try {
          msg = (JSON.parse(msg) as { error: { message: string } }).error.message;
        } catch {
          // not vigil's error body
        }
        reject(new VigilError("VIGIL_HOST", `The target agent ${q(target.host)} refused the disk: ${msg}`));
      });
    });
    const src = createReadStream(file);
    src.on("data", (c) => onBytes(c.length));
    src.on("error", (err) => req.destroy(err));
    src.pipe(req);
  });
}
