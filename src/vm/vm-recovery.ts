/**
 * Recovery after vigil (re)starts, before any request: every live VM's QEMU is found again or its interrupted
 * operation rolled back (`recover`), what a crash left in `vms/` is erased (`sweepLeftovers`), and a guest-RAM
 * file an older vigil left on disk is erased (`eraseLegacyRamFile`, also run before every start).
 */
import { existsSync, readdirSync, rmSync } from "node:fs";
import { join } from "node:path";
import { messageOf } from "../errors.ts";
import { vmLayout } from "../paths.ts";
import { isQemuOf, readPidFile, signal, waitForExit } from "../host/qemu-process.ts";
import { VmRuntime } from "../host/vm-runtime.ts";
import { eraseOwnedFile, eraseTree } from "../host/erase.ts";
import { hostCgroupSpecs, removeCgroups } from "../host/jail.ts";
import { jailPidFile } from "./jail-launch.ts";
import { SYSTEM_ACTOR } from "../auth/permissions.ts";
import { isLive } from "./state-machine.ts";
import type { VmRecord } from "./vm-repository.ts";
import type { VmCore } from "./vm-core.ts";
import type { VmSupervisor } from "./vm-supervision.ts";
import { rememberAttachedNics, unplugNics } from "./vm-nics.ts";

/**
 * Finds every VM's QEMU again after vigil (re)starts. A QEMU is only trusted if pid file, process and uuid
 * agree. Operations that were cut short are rolled back: an interrupted start is killed (the VM was stopped
 * before), an interrupted stop is completed. A VM whose QEMU died while vigil was away is marked crashed.
 */
export async function recover(core: VmCore, supervisor: VmSupervisor): Promise<{ reattached: string[]; crashed: string[] }> {
  const { d } = core;
  const reattached: string[] = [];
  const crashed: string[] = [];
  await sweepLeftovers(core);
  for (const vm of await d.repo.list()) {
    if (!isLive(vm.state)) continue;
    await core.locks.run(vm.id, async () => {
      const l = core.layout(vm);
      // A jailed QEMU's host pid is in the helper's root-owned file (QEMU's own -pidfile says 1, its ns pid).
      const pid = readPidFile(jailPidFile(l)) ?? readPidFile(l.pidFile) ?? vm.pid ?? undefined;
      const alive = pid !== undefined && isQemuOf(pid, vm.id);
      if (alive && (vm.state === "running" || vm.state === "paused")) {
        try {
          const rt = await VmRuntime.attach(vm.id, pid, l, d.log);
          const status = await rt.status();
          supervisor.adopt(vm, rt);
          await rememberAttachedNics(core, vm);
          await d.repo.update(vm.id, { state: status === "paused" ? "paused" : "running", pid });
          reattached.push(vm.name);
          return;
        } catch (err) {
          d.log.error({ vm: vm.name, err: messageOf(err) }, "QEMU is alive but its QMP socket does not answer; leaving it alone");
          return;
        }
      }
      if (alive) {
        // starting or stopping when vigil died: roll back the start / complete the stop.
        signal(pid, "SIGKILL");
        await waitForExit(pid, 10_000);
      }
      await eraseLegacyRamFile(core, vm);
      removeCgroups(hostCgroupSpecs(vm.id));
      // Its QEMU is gone: its taps (persistent, in vigil's netns) go too. A reattached VM (above) keeps them.
      await unplugNics(core, vm);
      const wasRunning = vm.state === "running" || vm.state === "paused";
      await d.repo.update(vm.id, { state: wasRunning ? "crashed" : "stopped", pid: null });
      await d.audit.append({
        actor: SYSTEM_ACTOR.name,
        action: wasRunning ? "vm.crashed" : "vm.recovered",
        target: core.target(vm),
        result: "ok",
        details: wasRunning ? { detail: "QEMU exited while vigil was not running" } : { detail: `operation interrupted in state ${vm.state}; rolled back to stopped` },
      });
      if (wasRunning) crashed.push(vm.name);
    });
  }
  return { reattached, crashed };
}

/**
 * At start, before any request: what a crash left in `vms/` is erased like a purge (overwrite, then unlink),
 * each as one audited recovery action — a VM directory whose creation never finished (its intent is still
 * open: its row, if one was inserted, goes too), and import/export staging (`import-*`, `export-*`, `.tmp-*`),
 * which holds decompressed disks and guest RAM that no registration covers.
 */
async function sweepLeftovers(core: VmCore): Promise<void> {
  const { d } = core;
  const erase = async (path: string, reason: string, vm?: { id: string; name: string | null }) => {
    const r = eraseTree(d.home.vmsDir, path);
    await d.audit.append({
      actor: SYSTEM_ACTOR.name,
      action: "vm.leftover-erased",
      target: vm ? { kind: "vm", id: vm.id, name: vm.name } : { kind: "host", name: d.hostName },
      result: "ok",
      details: { path, reason, files: r.files, bytes: r.bytes, ...(r.refused.length > 0 ? { refused: r.refused } : {}) },
    });
  };
  for (const intent of await d.registry.openIntents("materialize")) {
    const row = await d.repo.getById(intent.vmId).catch(() => undefined);
    if (intent.path === vmLayout(d.home.vmsDir, intent.vmId).dir) {
      await erase(intent.path, "creation interrupted (no VM was created)", { id: intent.vmId, name: row?.name ?? null });
    }
    if (row) {
      await d.locations.close(row.id);
      await d.repo.delete(row.id);
    }
    for (const f of await d.registry.list(intent.vmId)) await d.registry.markRemoved(intent.vmId, f.path, "creation-rolled-back");
    await d.registry.fulfil(intent.id);
  }
  if (existsSync(d.home.vmsDir)) {
    for (const name of readdirSync(d.home.vmsDir)) {
      if (/^(\.tmp-|import-|export-)/.test(name)) await erase(join(d.home.vmsDir, name), "staging left by an interrupted import or export");
    }
  }
}

/**
 * Older vigil kept guest RAM in `mem/ram` (a shared file mapping) and only unlinked it; a host crash left it
 * on disk. If one is still there it is overwritten, unlinked and recorded, never reused.
 */
export async function eraseLegacyRamFile(core: VmCore, vm: VmRecord): Promise<void> {
  const dir = join(core.layout(vm).dir, "mem");
  const file = join(dir, "ram");
  if (existsSync(file)) {
    eraseOwnedFile(core.layout(vm).dir, file);
    await core.d.registry.markRemoved(vm.id, file, "overwritten");
  }
  rmSync(dir, { recursive: true, force: true });
}
