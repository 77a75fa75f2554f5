/**
 * The agent's side of HA restarts (docs/cluster.md "Shared storage and HA restarts").
 *
 * What survives a lost host is what it left on the shared storage: for each shared-storage VM it holds, the agent
 * keeps DIR/<uuid>/dossier.json (the migration dossier: identity, owner, generation log, firewall policy, location
 * history, monotonic store, IDS watch; rewritten whenever the VM's state changed since the last write) and
 * DIR/<uuid>/store.json (the monotonic store alone, rewritten every sync, so counters restart where they were,
 * never lower). Both are written atomically (a temporary file, fsync, rename) and read back as untrusted input:
 * the dossier through its schema and the import checks, the store through its own schema.
 *
 * `restartHere` (the target, at the manager's request, after the manager's durable claim) imports the dossier,
 * commits the VM here as stopped on the same disk files and starts it: a crash restart is a reboot, not a clone, so
 * the uuid, vmgenid and generation stay. `dropStale` (the lost host, when it holds a lease again) removes its own
 * row of every VM the cluster restarted elsewhere, without touching the shared files.
 */
import { closeSync, existsSync, fsyncSync, openSync, readFileSync, renameSync, statSync, writeSync } from "node:fs";
import { join } from "node:path";
import { z } from "zod";
import type { Db } from "../inventory/db.ts";
import type { RequestContext } from "../auth/guard.ts";
import { SYSTEM_ACTOR } from "../auth/permissions.ts";
import { VigilError, messageOf, q } from "../errors.ts";
import { parseOrThrow } from "../validation.ts";
import { exportDossier, exportStore, importDossier, type DossierDeps } from "./dossier.ts";
import { diskFile } from "../vm/vm-view.ts";
import { sharedVmDir } from "../cluster/shared-storage.ts";

/** A dossier on the shared storage is refused above this size (it is input). */
export const SHARED_DOSSIER_MAX_BYTES = 8 * 2 ** 20;

const restartSchema = z.strictObject({
  vmId: z.uuid(),
  from: z.string().min(1).max(253),
  lostEpoch: z.number().int().min(1),
});

/** Writes `data` to `path` atomically (0600): a reader sees the old file or the new one, never half of it. */
export function writeAtomically(path: string, data: string): void {
  const tmp = `${path}.tmp-${process.pid}`;
  const fd = openSync(tmp, "w", 0o600);
  try {
    writeSync(fd, data);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  renameSync(tmp, path);
}

/** Reads a JSON file of the shared storage, bounded; the caller validates what it holds. */
export function readSharedJson(path: string, what: string): unknown {
  let size: number;
  try {
    size = statSync(path).size;
  } catch {
    throw new VigilError("VIGIL_CONFLICT", `Cannot restart the VM: its ${what} ${q(path)} is not on the shared storage`, { field: what });
  }
  if (size > SHARED_DOSSIER_MAX_BYTES) throw new VigilError("VIGIL_CONFLICT", `Cannot restart the VM: its ${what} ${q(path)} is larger than ${SHARED_DOSSIER_MAX_BYTES} bytes`, { field: what });
  try {
    return JSON.parse(readFileSync(path, "utf8")) as unknown;
  } catch (err) {
    throw new VigilError("VIGIL_CONFLICT", `Cannot restart the VM: its ${what} ${q(path)} is not JSON (${messageOf(err)})`, { field: what });
  }
}

export interface HaAgentDeps extends DossierDeps {
  sharedStorage: string;
  /** The cluster database (the lease database): the manager's claims are read there by `dropStale`. */
  clusterDb?: () => Db | undefined;
}

const systemCtx = (why: string): RequestContext => ({ actor: SYSTEM_ACTOR, requestId: `ha-${why}` });

export class HaAgent {
  /** When each VM's dossier was last written, by the VM's stateChangedAt then. */
  #written = new Map<string, string>();
  #timer: ReturnType<typeof setInterval> | undefined;
  #syncing = false;

  constructor(private readonly d: HaAgentDeps) {}

  /** Keeps the shared dossiers fresh every `everyMs`. */
  start(everyMs = 2000): void {
    this.#timer = setInterval(() => void this.sync(), everyMs);
    this.#timer.unref();
  }

  close(): void {
    if (this.#timer) clearInterval(this.#timer);
  }

  /** One pass: the dossier of each shared VM whose state changed, and every shared VM's store. Never throws. */
  async sync(): Promise<void> {
    if (this.#syncing) return;
    this.#syncing = true;
    try {
      for (const vm of await this.d.vms.list(systemCtx("sync"))) {
        if (vm.spec.storage !== "shared" || vm.state === "incoming" || vm.state === "starting" || vm.state === "stopping") continue;
        const dir = sharedVmDir(this.d.sharedStorage, vm.id);
        if (!existsSync(dir)) continue;
        try {
          if (this.#written.get(vm.id) !== vm.stateChangedAt || !existsSync(join(dir, "dossier.json"))) {
            const dossier = await exportDossier(this.d, systemCtx("dossier"), vm.name);
            writeAtomically(join(dir, "dossier.json"), JSON.stringify(dossier));
            this.#written.set(vm.id, vm.stateChangedAt);
          }
          writeAtomically(join(dir, "store.json"), JSON.stringify(await exportStore(this.d, vm.id)));
        } catch (err) {
          this.d.log.warn({ vm: vm.name, err: messageOf(err) }, "cannot write the shared dossier");
        }
      }
    } catch (err) {
      this.d.log.warn({ err: messageOf(err) }, "shared dossier sync failed");
    } finally {
      this.#syncing = false;
    }
  }

  /**
   * Restarts here the shared-storage VM `vmId` of lost host `from` (the manager holds the claim). Imported from
   * its shared dossier (with the newer store), committed as stopped on the same files, then started.
   */
  async restartHere(ctx: RequestContext, body: unknown): Promise<{ vm: string; id: string; state: string }> {
    const r = parseOrThrow(restartSchema, body, "HA restart", "VIGIL_BAD_REQUEST");
    const dir = sharedVmDir(this.d.sharedStorage, r.vmId);
    const raw = readSharedJson(join(dir, "dossier.json"), "dossier");
    if (typeof raw !== "object" || raw === null || Array.isArray(raw)) throw new VigilError("VIGIL_CONFLICT", "Cannot restart the VM: its shared dossier is not an object", { field: "dossier" });
    const dossier = raw as Record<string, unknown>;
    const vm = dossier.vm as Record<string, unknown> | undefined;
    if (vm?.id !== r.vmId) throw new VigilError("VIGIL_CONFLICT", `Cannot restart VM ${q(r.vmId)}: the shared dossier in ${q(dir)} is of VM ${q(vm?.id)}`, { field: "vmId" });
    if ((vm.spec as { storage?: unknown } | undefined)?.storage !== "shared") throw new VigilError("VIGIL_CONFLICT", `Cannot restart VM ${q(r.vmId)}: its dossier says its disks are not on shared storage`, { field: "storage" });
    // The store written last wins over the dossier's (older) copy; the dossier schema checks it.
    if (existsSync(join(dir, "store.json"))) dossier.vtime = readSharedJson(join(dir, "store.json"), "store");
    const imported = await importDossier(this.d, dossier, ctx);
    const id = imported.vm.id;
    try {
      for (const disk of imported.vm.spec.disks) {
        const file = diskFile(join(dir, "disks"), disk.name);
        if (!existsSync(file)) throw new VigilError("VIGIL_CONFLICT", `Cannot restart VM ${q(imported.vm.name)}: its disk ${q(file)} is not on the shared storage`, { field: "disks" });
        await this.d.registry.register(id, file, "disk");
      }
      await this.d.vms.commitStopped(id, ctx, { how: "ha-restart", from: r.from, lostEpoch: r.lostEpoch });
    } catch (err) {
      await this.d.vms.abortIncoming(id, ctx, `HA restart failed: ${messageOf(err)}`).catch(() => undefined);
      throw err;
    }
    const started = await this.d.vms.start(ctx, imported.vm.name);
    return { vm: started.name, id, state: started.state };
  }

  /**
   * The lost host, holding a lease again: every VM of its own that the cluster restarted elsewhere (a claim from
   * this host) is dropped here, row only: its shared files belong to the host that runs it now. Audited
   * `vm.ha-dropped`. Returns the names dropped.
   */
  async dropStale(): Promise<string[]> {
    const db = this.d.clusterDb?.();
    if (!db) return [];
    const claims = await db.selectFrom("cluster_ha_restarts").select(["vm_id", "to_host", "lost_epoch"]).where("from_host", "=", this.d.hostName).execute();
    const dropped: string[] = [];
    for (const c of claims) {
      const vm = await this.d.vms.recordById(c.vm_id).catch(() => undefined);
      if (!vm || vm.spec.storage !== "shared") continue;
      const ctx = systemCtx("drop");
      if (["running", "paused", "starting"].includes(vm.state)) await this.d.vms.kill(ctx, vm.name).catch(() => undefined);
      const fresh = await this.d.vms.recordById(c.vm_id);
      await this.d.vms.removeVm(fresh, "ha-dropped", false);
      await this.d.audit.append({ actor: SYSTEM_ACTOR.name, action: "vm.ha-dropped", target: { kind: "vm", id: vm.id, name: vm.name }, result: "ok", details: { restartedOn: c.to_host, lostEpoch: Number(c.lost_epoch), sharedFiles: "kept" } });
      dropped.push(vm.name);
    }
    return dropped;
  }
}
