/**
 * The visibility operations (docs/network.md "Visibility", "Port forwards"): per-vNIC counters, time-boxed mirrors
 * to pcap files, and host-loopback port forwards — each authorized and audited through the Guard. It reads the
 * switch only through SwitchView and VMs only through `lookupVm` (the VM service's lookup, which hides VMs the
 * caller may not read), so it depends on neither's internals.
 */
import { randomUUID } from "node:crypto";
import { mkdirSync, rmSync } from "node:fs";
import { join } from "node:path";
import type { AuditLog } from "../audit/audit-log.ts";
import type { Guard, RequestContext } from "../auth/guard.ts";
import type { OwnerRef } from "../auth/permissions.ts";
import { VigilError, q } from "../errors.ts";
import type { Db } from "../inventory/db.ts";
import type { Logger } from "../log.ts";
import type { DataRegistry } from "../provenance/data-registry.ts";
import { readCounters, type NicCounters } from "./counters.ts";
import { ForwardManager, checkGuestPort, parseListen, type ForwardSpec } from "./forward.ts";
import { mirrorToIds, type IdsTapResult } from "./ids-tap.ts";
import { startCapture } from "./mirror.ts";
import type { AttachedNic, SwitchView } from "./types.ts";

export interface VisVm {
  id: string;
  name: string;
  owner: OwnerRef;
}

export interface VisDeps {
  switch: SwitchView;
  guard: Guard;
  audit: AuditLog;
  registry: DataRegistry;
  db: Db;
  /**
   * Where a VM's captures go: the daemon gives `<vms>/<vm id>/captures`, inside the VM's own directory, so the
   * data registry's purge (which erases only files inside the VM's directory) and `vm where` cover them.
   */
  captureDir(vmId: string): string;
  /** The daemon's 0700 run dir: the forward relays' sockets. */
  runDir: string;
  lookupVm(ctx: RequestContext, name: string, action: string): Promise<VisVm>;
  /** A VM by id, for re-opening forwards at start (undefined: gone). */
  vmById(id: string): Promise<VisVm | undefined>;
  log?: Logger;
}

export interface CaptureInfo {
  id: string;
  vm: string;
  nic: string;
  bytes: number;
  packets: number;
  stoppedBy: string;
  startedAt: string;
  stoppedAt: string | null;
}

export interface ForwardInfo {
  id: string;
  vm: string;
  nic: string;
  guestIp: string;
  guestPort: number;
  listen: string;
  createdAt: string;
}

export interface MirrorRequest {
  nic?: string | undefined;
  durationMs: number;
  maxBytes?: number | undefined;
  maxPackets?: number | undefined;
}

const target = (vm: VisVm) => ({ kind: "vm", id: vm.id, name: vm.name });

export class VisService {
  readonly forwards: ForwardManager;

  constructor(private readonly d: VisDeps) {
    this.forwards = new ForwardManager(() => d.switch.netns(), d.runDir);
  }

  private async nicsOf(vm: VisVm, nic?: string): Promise<AttachedNic[]> {
    const all = (await this.d.switch.attached()).filter((n) => n.vmId === vm.id && (nic === undefined || n.nic === nic));
    if (all.length === 0) {
      throw new VigilError("VIGIL_INVALID_STATE", nic === undefined ? `VM ${q(vm.name)} has no NIC plugged into a vigil network on this host` : `VM ${q(vm.name)} has no plugged-in NIC ${q(nic)}`, nic === undefined ? {} : { field: "nic" });
    }
    return all;
  }

  /** Counters of each of the VM's plugged-in NICs. Needs vm.read (lookup) and network.read. */
  async counters(ctx: RequestContext, name: string): Promise<NicCounters[]> {
    const vm = await this.d.lookupVm(ctx, name, "net.counters");
    return this.d.guard.run(ctx, { action: "net.counters", permission: "network.read", target: target(vm), owner: vm.owner, readOnly: true }, async () =>
      readCounters(this.d.switch.netns(), await this.nicsOf(vm)),
    );
  }

  /**
   * Mirrors one NIC's traffic for the window and resolves when it is over. Needs network.manage (a capture shows
   * traffic). Audited net.mirror.start (before) and net.mirror.stop (bytes, packets, why).
   */
  async mirror(ctx: RequestContext, name: string, req: MirrorRequest): Promise<CaptureInfo> {
    const vm = await this.d.lookupVm(ctx, name, "net.mirror.start");
    const limits = { durationMs: req.durationMs, maxBytes: req.maxBytes ?? 64 * 1024 * 1024, maxPackets: req.maxPackets ?? 1_000_000 };
    const started = await this.d.guard.run(
      ctx,
      { action: "net.mirror.start", permission: "network.manage", target: target(vm), owner: vm.owner, details: { nic: req.nic ?? null, ...limits } },
      async () => {
        const nics = await this.nicsOf(vm, req.nic);
        if (req.nic === undefined && nics.length > 1) throw new VigilError("VIGIL_BAD_REQUEST", `VM ${q(vm.name)} has ${nics.length} NICs: name one (--nic)`, { field: "nic" });
        const nic = nics[0]!;
        const id = randomUUID();
        const dir = this.d.captureDir(vm.id);
        mkdirSync(dir, { recursive: true, mode: 0o700 });
        const path = join(dir, `${id}.pcap`);
        const cap = startCapture(this.d.switch.netns(), nic.tap, path, limits);
        try {
          await cap.ready;
        } catch (err) {
          rmSync(path, { force: true });
          throw err;
        }
        const startedAt = new Date().toISOString();
        await this.d.db
          .insertInto("net_captures")
          .values({ id, vm_id: vm.id, nic: nic.nic, path, bytes: 0, packets: 0, stopped_by: "running", created_by: ctx.actor.name, started_at: startedAt, stopped_at: null })
          .execute();
        await this.d.registry.register(vm.id, path, "capture", { hash: false });
        return { id, nic: nic.nic, cap, startedAt };
      },
      (r) => ({ captureId: r.id, nic: r.nic }),
    );
    let result;
    try {
      result = await started.cap.done;
    } catch (err) {
      await this.d.audit.append({ actor: ctx.actor.name, action: "net.mirror.stop", target: target(vm), result: "error", requestId: ctx.requestId, details: { captureId: started.id, error: String(err) } });
      throw err;
    }
    const stoppedAt = new Date().toISOString();
    await this.d.db.updateTable("net_captures").set({ bytes: result.bytes, packets: result.packets, stopped_by: result.stoppedBy, stopped_at: stoppedAt }).where("id", "=", started.id).execute();
    await this.d.audit.append({
      actor: ctx.actor.name,
      action: "net.mirror.stop",
      target: target(vm),
      result: "ok",
      requestId: ctx.requestId,
      details: { captureId: started.id, nic: started.nic, bytes: result.bytes, packets: result.packets, stoppedBy: result.stoppedBy },
    });
    return { id: started.id, vm: vm.name, nic: started.nic, bytes: result.bytes, packets: result.packets, stoppedBy: result.stoppedBy, startedAt: started.startedAt, stoppedAt };
  }

  /**
   * Copies one NIC's traffic to an IDS interface in vigil's netns for the window; resolves when it is over.
   * network.manage; audited net.mirror.start (target) and net.mirror.stop.
   */
  async mirrorIds(ctx: RequestContext, name: string, req: { nic?: string | undefined; durationMs: number; toIds: string }): Promise<IdsTapResult & { vm: string; nic: string }> {
    const vm = await this.d.lookupVm(ctx, name, "net.mirror.start");
    const started = await this.d.guard.run(ctx, { action: "net.mirror.start", permission: "network.manage", target: target(vm), owner: vm.owner, details: { nic: req.nic ?? null, toIds: req.toIds, durationMs: req.durationMs } }, async () => {
      const nics = await this.nicsOf(vm, req.nic);
      if (req.nic === undefined && nics.length > 1) throw new VigilError("VIGIL_BAD_REQUEST", `VM ${q(vm.name)} has ${nics.length} NICs: name one (--nic)`, { field: "nic" });
      return nics[0]!;
    });
    const base = { actor: ctx.actor.name, action: "net.mirror.stop", target: target(vm), requestId: ctx.requestId };
    try {
      const r = await mirrorToIds(this.d.switch.netns(), started.tap, req.toIds, req.durationMs);
      await this.d.audit.append({ ...base, result: "ok", details: { nic: started.nic, toIds: req.toIds, durationMs: req.durationMs } });
      return { ...r, vm: vm.name, nic: started.nic };
    } catch (err) {
      await this.d.audit.append({ ...base, result: "error", details: { nic: started.nic, toIds: req.toIds, error: String(err) } });
      throw err;
    }
  }

  /** Every capture (network.read: the list shows no traffic). */
  async captures(ctx: RequestContext): Promise<CaptureInfo[]> {
    return this.d.guard.run(ctx, { action: "net.captures", permission: "network.read", target: { kind: "network" }, readOnly: true }, async () => {
      const rows = await this.d.db.selectFrom("net_captures").selectAll().orderBy("started_at").execute();
      const out: CaptureInfo[] = [];
      for (const r of rows) {
        const vm = await this.d.vmById(r.vm_id);
        out.push({ id: r.id, vm: vm?.name ?? r.vm_id, nic: r.nic, bytes: r.bytes, packets: r.packets, stoppedBy: r.stopped_by, startedAt: r.started_at, stoppedAt: r.stopped_at });
      }
      return out;
    });
  }

  /** The path of a finished capture, for download (network.manage; audited net.capture.download). */
  async captureFile(ctx: RequestContext, id: string): Promise<string> {
    const row = await this.d.db.selectFrom("net_captures").selectAll().where("id", "=", id).executeTakeFirst();
    const vm = row ? await this.d.vmById(row.vm_id) : undefined;
    return this.d.guard.run(ctx, { action: "net.capture.download", permission: "network.manage", target: { kind: "capture", id }, owner: vm?.owner, details: { bytes: row?.bytes ?? null } }, async () => {
      if (!row) throw new VigilError("VIGIL_NOT_FOUND", `Capture ${q(id)} does not exist`);
      if (row.stopped_at === null) throw new VigilError("VIGIL_INVALID_STATE", `Cannot download capture ${q(id)}: it is still running`);
      return row.path;
    });
  }

  private async forwardInfo(spec: ForwardSpec, nic: string, createdAt: string): Promise<ForwardInfo> {
    return { id: spec.id, vm: spec.vmName, nic, guestIp: spec.guestIp, guestPort: spec.guestPort, listen: `${spec.listenHost}:${spec.listenPort}`, createdAt };
  }

  /** Opens and persists a forward (network.manage; audited net.forward.add). */
  async addForward(ctx: RequestContext, name: string, req: { guestPort: number; listen: string; nic?: string | undefined }): Promise<ForwardInfo> {
    checkGuestPort(req.guestPort);
    const listen = parseListen(req.listen);
    const vm = await this.d.lookupVm(ctx, name, "net.forward.add");
    return this.d.guard.run(
      ctx,
      { action: "net.forward.add", permission: "network.manage", target: target(vm), owner: vm.owner, details: { guestPort: req.guestPort, listen: req.listen, nic: req.nic ?? null } },
      async () => {
        const nics = await this.nicsOf(vm, req.nic);
        const nic = nics[0]!;
        const id = randomUUID().slice(0, 8);
        const spec: ForwardSpec = { id, vmId: vm.id, vmName: vm.name, guestIp: nic.ip, guestPort: req.guestPort, listenHost: listen.host, listenPort: listen.port };
        const taken = await this.d.db.selectFrom("net_forwards").select("id").where("listen_host", "=", listen.host).where("listen_port", "=", listen.port).executeTakeFirst();
        if (taken) throw new VigilError("VIGIL_CONFLICT", `Cannot forward: ${req.listen} is used by forward ${q(taken.id)}`, { field: "listen" });
        await this.forwards.open(spec);
        const createdAt = new Date().toISOString();
        try {
          await this.d.db.insertInto("net_forwards").values({ id, vm_id: vm.id, nic: nic.nic, guest_port: req.guestPort, listen_host: listen.host, listen_port: listen.port, created_by: ctx.actor.name, created_at: createdAt }).execute();
        } catch (err) {
          await this.forwards.close(id);
          throw err;
        }
        return this.forwardInfo(spec, nic.nic, createdAt);
      },
      (r) => ({ forwardId: r.id }),
    );
  }

  async listForwards(ctx: RequestContext): Promise<Array<ForwardInfo & { open: boolean }>> {
    return this.d.guard.run(ctx, { action: "net.forward.list", permission: "network.read", target: { kind: "network" }, readOnly: true }, async () => {
      const live = new Map(this.forwards.list().map((s) => [s.id, s]));
      const rows = await this.d.db.selectFrom("net_forwards").selectAll().orderBy("created_at").execute();
      const out: Array<ForwardInfo & { open: boolean }> = [];
      for (const r of rows) {
        const vm = await this.d.vmById(r.vm_id);
        const l = live.get(r.id);
        out.push({ id: r.id, vm: vm?.name ?? r.vm_id, nic: r.nic, guestIp: l?.guestIp ?? "", guestPort: r.guest_port, listen: `${r.listen_host}:${r.listen_port}`, createdAt: r.created_at, open: l !== undefined });
      }
      return out;
    });
  }

  /** Closes and forgets a forward (network.manage; audited net.forward.remove). */
  async removeForward(ctx: RequestContext, id: string): Promise<void> {
    const row = await this.d.db.selectFrom("net_forwards").selectAll().where("id", "=", id).executeTakeFirst();
    const vm = row ? await this.d.vmById(row.vm_id) : undefined;
    await this.d.guard.run(ctx, { action: "net.forward.remove", permission: "network.manage", target: { kind: "forward", id }, owner: vm?.owner, details: { vm: vm?.name ?? null } }, async () => {
      if (!row) throw new VigilError("VIGIL_NOT_FOUND", `Forward ${q(id)} does not exist`);
      await this.forwards.close(id);
      await this.d.db.deleteFrom("net_forwards").where("id", "=", id).execute();
    });
  }

  /**
   * At daemon start (and after a VM's NIC is plugged in): opens every persisted forward whose VM has that NIC on
   * this host and is not open yet. A forward that cannot open stays persisted and is reported.
   */
  async restoreForwards(): Promise<{ opened: string[]; failed: Array<{ id: string; reason: string }> }> {
    const rows = await this.d.db.selectFrom("net_forwards").selectAll().execute();
    const attached = await this.d.switch.attached();
    const open = new Set(this.forwards.list().map((s) => s.id));
    const res = { opened: [] as string[], failed: [] as Array<{ id: string; reason: string }> };
    for (const r of rows) {
      if (open.has(r.id)) continue;
      const nic = attached.find((n) => n.vmId === r.vm_id && n.nic === r.nic);
      const vm = await this.d.vmById(r.vm_id);
      if (!nic || !vm) continue;
      try {
        await this.forwards.open({ id: r.id, vmId: r.vm_id, vmName: vm.name, guestIp: nic.ip, guestPort: r.guest_port, listenHost: r.listen_host, listenPort: r.listen_port });
        res.opened.push(r.id);
      } catch (err) {
        res.failed.push({ id: r.id, reason: err instanceof Error ? err.message : String(err) });
        this.d.log?.warn({ forward: r.id, err: String(err) }, "cannot re-open a port forward");
      }
    }
    return res;
  }

  /** When a VM is deleted: its forwards close and are forgotten (its captures go with its data files). */
  async removeVm(vmId: string): Promise<void> {
    const rows = await this.d.db.selectFrom("net_forwards").select("id").where("vm_id", "=", vmId).execute();
    for (const r of rows) await this.forwards.close(r.id);
    await this.d.db.deleteFrom("net_forwards").where("vm_id", "=", vmId).execute();
    await this.d.db.deleteFrom("net_captures").where("vm_id", "=", vmId).execute();
  }

  /**
   * Removes a VM's forwards and capture rows once its deletion is on the record (vm.destroy / vm.purge, ok; or
   * vm.migrated-out: forwards are this host's loopback ports and do not follow the VM):
   * the audit log is the one place every deletion passes, so the VM code needs no hook for it. Returns the
   * unsubscribe function.
   */
  followVmRemovals(): () => void {
    return this.d.audit.subscribe((r) => {
      if ((r.action === "vm.destroy" || r.action === "vm.purge" || r.action === "vm.migrated-out") && r.result === "ok" && r.target.kind === "vm" && r.target.id) {
        const id = r.target.id;
        this.pendingRemovals = this.pendingRemovals.then(() => this.removeVm(id)).catch((err: unknown) => this.d.log?.warn({ vm: id, err: String(err) }, "cannot remove a deleted VM's forwards"));
      }
    });
  }

  private pendingRemovals: Promise<void> = Promise.resolve();

  /** Settles when the removals triggered so far are done (tests, close). */
  settled(): Promise<void> {
    return this.pendingRemovals;
  }

  async close(): Promise<void> {
    await this.pendingRemovals;
    await this.forwards.closeAll();
  }
}
