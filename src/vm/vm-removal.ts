/**
 * Removing VMs: `destroy` (and purge) for users, `removeVm` for capabilities that already hold the lock. A
 * removal touches only what vigil made below the VM's own directory on this host; everything else it was told
 * about is reported as unreachable, never touched. A purge overwrites before it unlinks.
 */
import { existsSync, readdirSync, rmSync } from "node:fs";
import { dirname, join } from "node:path";
import { VigilError, q } from "../errors.ts";
import { eraseOwnedFile } from "../host/erase.ts";
import type { RequestContext } from "../auth/guard.ts";
import { assertAllowed, isLive } from "./state-machine.ts";
import type { VmRecord } from "./vm-repository.ts";
import type { VmCore } from "./vm-core.ts";
import type { VmLifecycle } from "./vm-lifecycle.ts";
import type { RemovalReport } from "./vm-types.ts";

/** Regular files below `dir` (not sockets or links), for purging. */
function listFiles(dir: string): string[] {
  const out: string[] = [];
  if (!existsSync(dir)) return out;
  for (const entry of readdirSync(dir, { withFileTypes: true, recursive: true })) {
    if (entry.isFile()) out.push(join(entry.parentPath, entry.name));
  }
  return out;
}

export class VmRemoval {
  constructor(
    private readonly core: VmCore,
    /** A forced destroy kills a live VM first, under the same lock. */
    private readonly lifecycle: VmLifecycle,
  ) {}

  /**
   * Deletes a VM. With `purge`, every registered file of the VM that vigil can reach (its disks, logs, and
   * copies such as exported bundles on this host) is overwritten before unlinking, and the report says what
   * was destroyed and what could not be reached.
   */
  async destroy(ctx: RequestContext, name: string, options: { force?: boolean | undefined; purge?: boolean | undefined } = {}): Promise<RemovalReport> {
    const { core } = this;
    const vm = await core.lookup(ctx, name, options.purge ? "vm.purge" : "vm.destroy");
    const action = options.purge ? "vm.purge" : "vm.destroy";
    return core.d.guard.run(
      ctx,
      { action, permission: "vm.delete", target: core.target(vm), owner: vm.owner, details: { force: options.force ?? false } },
      () =>
        core.locked(vm, async (fresh) => {
          if (isLive(fresh.state) && options.force) await this.lifecycle.killLocked(fresh, "destroy");
          const current = await core.d.repo.getById(vm.id);
          assertAllowed("destroy", current.name, current.state, options.purge ? "purge" : "destroy");
          const dependents = await core.d.repo.dependentsOf(current.id);
          if (dependents.length > 0) {
            throw new VigilError("VIGIL_CONFLICT", `Cannot ${options.purge ? "purge" : "destroy"} template ${q(current.name)}: linked clones depend on it (${dependents.map((x) => x.name).join(", ")})`);
          }
          return this.removeVm(current, options.purge ? "purged" : "deleted", options.purge ?? false);
        }),
      (r) => ({ destroyed: r.destroyed.map((f) => f.path), unreachable: r.unreachable, ...(r.derived.length > 0 ? { derived: r.derived.map((x) => x.name) } : {}) }),
    );
  }

  /** VMs descended from `vm` by clone or import, transitively (breadth first, bounded). */
  private async derivedFrom(vm: VmRecord): Promise<RemovalReport["derived"]> {
    const all = await this.core.d.repo.list();
    const out: RemovalReport["derived"] = [];
    const queue = [vm.id];
    const seen = new Set(queue);
    while (queue.length > 0 && out.length < 1000) {
      const id = queue.shift()!;
      for (const v of all) {
        if (v.lineage.sourceVm?.id !== id || seen.has(v.id) || v.lineage.kind === "image") continue;
        seen.add(v.id);
        queue.push(v.id);
        out.push({ name: v.name, kind: v.lineage.kind, from: v.lineage.sourceVm.name });
      }
    }
    return out;
  }

  /** Deletes a stopped VM's files and row; the audit log and the data registry keep its story. */
  async removeVm(vm: VmRecord, how: string, purge: boolean): Promise<RemovalReport> {
    const { d } = this.core;
    const l = this.core.layout(vm);
    // A shared-storage VM's disks are in its directory on the shared storage (src/cluster/shared-storage.ts). Only
    // a delete touches them: a VM that moved away, an aborted incoming copy or a stale copy dropped after an HA
    // restart elsewhere leaves them to the host that runs the VM now.
    const sharedDir = vm.spec.storage === "shared" ? dirname(l.disksDir) : undefined;
    const keepShared = sharedDir !== undefined && how !== "deleted" && how !== "purged";
    const rootOf = (path: string) => (sharedDir !== undefined && path.startsWith(sharedDir + "/") ? sharedDir : path.startsWith(l.dir + "/") ? l.dir : undefined);
    const report: RemovalReport = { id: vm.id, name: vm.name, destroyed: [], unreachable: [], derived: purge ? await this.derivedFrom(vm) : [] };
    for (const f of await d.registry.listForRemoval(vm.id)) {
      if (keepShared && f.path.startsWith(sharedDir + "/")) {
        await d.registry.markRemoved(vm.id, f.path, `${how}; on shared storage, left to the host that runs the VM`);
        continue;
      }
      if (f.host !== d.hostName) {
        report.unreachable.push({ path: f.path, host: f.host, purpose: f.purpose, why: "on another host" });
        continue;
      }
      if (f.origin !== "vigil") {
        report.unreachable.push({ path: f.path, host: f.host, purpose: f.purpose, why: "reported by a client, not made by vigil: never touched" });
        continue;
      }
      // vigil erases only what it made, below this VM's own directory, and only if it is still that file.
      const root = rootOf(f.path);
      if (root === undefined) {
        report.unreachable.push({ path: f.path, host: f.host, purpose: f.purpose, why: `refused: outside the VM's directory ${l.dir}${sharedDir ? ` and its shared directory ${sharedDir}` : ""}` });
        continue;
      }
      if (!purge) {
        if (existsSync(f.path)) {
          rmSync(f.path, { force: true });
          report.destroyed.push({ path: f.path, purpose: f.purpose, bytes: 0 });
        }
        await d.registry.markRemoved(vm.id, f.path, how);
        continue;
      }
      const r = eraseOwnedFile(root, f.path, f.identity);
      if (r.erased) report.destroyed.push({ path: f.path, purpose: f.purpose, bytes: r.bytes });
      else if (!r.missing) report.unreachable.push({ path: f.path, host: f.host, purpose: f.purpose, why: `refused: ${r.why}` });
      // A refused name goes with the directory below, unwritten: the registration says so.
      await d.registry.markRemoved(vm.id, f.path, r.erased || r.missing ? how : `${how}; the name was removed, not erased: ${r.why}`);
    }
    if (purge) {
      // Anything else in the VM's directory that was never registered (sockets, pid file) is erased too.
      for (const path of listFiles(l.dir)) {
        const r = eraseOwnedFile(l.dir, path);
        if (!r.erased && !r.missing) report.unreachable.push({ path, host: d.hostName, purpose: "unregistered", why: `refused: ${r.why}` });
      }
    }
    rmSync(l.dir, { recursive: true, force: true });
    if (sharedDir !== undefined && !keepShared) {
      if (purge) for (const path of listFiles(sharedDir)) eraseOwnedFile(sharedDir, path);
      rmSync(sharedDir, { recursive: true, force: true });
    }
    await d.locations.close(vm.id);
    // The gate policy set for this VM by name goes with it: a later VM of the same name must not inherit it.
    if (how === "deleted" || how === "purged") await d.repo.db.deleteFrom("posture_policies").where("scope", "=", `vm:${vm.name}`).execute();
    await d.repo.delete(vm.id);
    return report;
  }
}
