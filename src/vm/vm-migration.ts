/**
 * The VM side of moving a VM between hosts (docs/cluster.md, "Live migration" steps 3, 5, 6 and "Identity follows
 * the VM"). On the target: an `incoming` VM (stored by migration/dossier.ts with its source's uuid) is started with
 * `-incoming defer` exactly like a start otherwise (jail, NICs plugged and firewalled before QEMU, runtime hooks),
 * then committed (`cont`, running, location, `vm.migrated-in`) or aborted (QEMU killed, NICs unplugged, row, files
 * and the identity rows it brought deleted, `vm.migration-aborted`). On the source: `releaseOutgoing` quits QEMU
 * and removes the VM's row and vigil-made files; the location history and the audit log keep that it left, and
 * for which host. None of these authorizes by itself except `startIncoming`: the migration was authorized
 * (`vm.migrate`) when it began, and these are its steps (like `removeVm` for a capability holding the lock).
 */
import { VigilError, q } from "../errors.ts";
import type { RequestContext } from "../auth/guard.ts";
import { SYSTEM_ACTOR } from "../auth/permissions.ts";
import { isQemuOf, readPidFile, signal, waitForExit } from "../host/qemu-process.ts";
import { jailPidFile } from "./jail-launch.ts";
import { hostCgroupSpecs, removeCgroups } from "../host/jail.ts";
import { assertAllowed } from "./state-machine.ts";
import type { VmRecord } from "./vm-repository.ts";
import type { VmCore } from "./vm-core.ts";
import type { VmLifecycle } from "./vm-lifecycle.ts";
import type { VmRemoval } from "./vm-removal.ts";
import { unplugNics } from "./vm-nics.ts";

/** How long a source's QEMU gets to quit after a completed migration before it is killed. */
const QUIT_TIMEOUT_MS = 5000;

export class VmMigration {
  constructor(
    private readonly core: VmCore,
    private readonly lifecycle: VmLifecycle,
    private readonly removal: VmRemoval,
  ) {}

  private actorOf(ctx: RequestContext | undefined): { actor: string; requestId?: string | undefined } {
    return ctx ? { actor: ctx.actor.name, requestId: ctx.requestId } : { actor: SYSTEM_ACTOR.name };
  }

  /** Starts the incoming VM's QEMU (`-incoming defer`, no `cont`); the VM stays `incoming`. */
  async startIncoming(ctx: RequestContext, vmId: string): Promise<VmRecord> {
    const { core } = this;
    const vm = await core.d.repo.getById(vmId);
    return core.d.guard.run(ctx, { action: "vm.start-incoming", permission: "vm.migrate", target: core.target(vm), owner: vm.owner }, () =>
      core.locked(vm, async (fresh) => {
        assertAllowed("start-incoming", fresh.name, fresh.state, "start the incoming QEMU of");
        if (core.runtimes.has(fresh.id)) throw new VigilError("VIGIL_INVALID_STATE", `Cannot start the incoming QEMU of VM ${q(fresh.name)}: it is already running`);
        return this.lifecycle.startLocked(fresh, {}, true);
      }),
      (v) => ({ pid: v.pid, accelerator: v.accelerator }),
    );
  }

  /**
   * After QEMU's incoming migration completed: `cont` (unless something already resumed it), state `running`,
   * this host recorded as the VM's location, `vm.migrated-in` audited. A QEMU still waiting (`inmigrate`) or
   * failed is refused: nothing changes.
   */
  async commitIncoming(vmId: string, ctx?: RequestContext, details: Record<string, unknown> = {}): Promise<VmRecord> {
    const { core } = this;
    const { d } = core;
    const vm = await d.repo.getById(vmId);
    return core.locked(vm, async (fresh) => {
      assertAllowed("commit-incoming", fresh.name, fresh.state, "commit the migration of");
      const rt = core.runtime(fresh);
      const status = await rt.status();
      if (status !== "running") {
        if (status !== "paused" && status !== "postmigrate") throw new VigilError("VIGIL_INVALID_STATE", `Cannot commit the migration of VM ${q(fresh.name)}: its QEMU is ${q(status)}, not done receiving it (it must be paused after a completed migration)`);
        await rt.qmp.execute("cont");
      }
      const updated = await d.repo.update(vmId, { state: "running", host: d.hostName });
      await d.locations.moveTo(vmId, d.hostName, core.layout(fresh).dir);
      await d.audit.append({ ...this.actorOf(ctx), action: "vm.migrated-in", target: core.target(fresh), result: "ok", details: { how: "live", host: d.hostName, ...details } });
      return updated;
    });
  }

  /**
   * A cold move's end on the target: the incoming VM (disks copied, no QEMU) becomes `stopped` here, its location
   * is recorded and `vm.migrated-in` audited.
   */
  async commitStopped(vmId: string, ctx?: RequestContext, details: Record<string, unknown> = {}): Promise<VmRecord> {
    const { core } = this;
    const { d } = core;
    const vm = await d.repo.getById(vmId);
    return core.locked(vm, async (fresh) => {
      assertAllowed("commit-incoming", fresh.name, fresh.state, "commit the migration of");
      if (core.runtimes.has(vmId)) throw new VigilError("VIGIL_INVALID_STATE", `Cannot commit VM ${q(fresh.name)} as stopped: its incoming QEMU is running`);
      const updated = await d.repo.update(vmId, { state: "stopped", host: d.hostName, pid: null });
      await d.locations.moveTo(vmId, d.hostName, core.layout(fresh).dir);
      await d.audit.append({ ...this.actorOf(ctx), action: "vm.migrated-in", target: core.target(fresh), result: "ok", details: { how: "cold", host: d.hostName, ...details } });
      return updated;
    });
  }

  /**
   * The target gives up an incoming VM (failure, cancel, or a restart that found it): its QEMU is killed, its
   * NICs unplugged, its files erased, and its row and the identity rows that came with it (generation log,
   * location history, monotonic store, IDS watch) deleted — they still live on the source. Audited
   * `vm.migration-aborted`. Idempotent for a VM that is already gone.
   */
  async abortIncoming(vmId: string, ctx?: RequestContext, reason = "aborted"): Promise<void> {
    const { core } = this;
    const vm = await core.d.repo.getById(vmId).catch(() => undefined);
    if (!vm) return;
    await core.locked(vm, async (fresh) => {
      assertAllowed("abort-incoming", fresh.name, fresh.state, "abort the migration of");
      await this.discardLocked(fresh, "migration-aborted");
      await core.d.audit.append({ ...this.actorOf(ctx), action: "vm.migration-aborted", target: core.target(fresh), result: "ok", details: { reason } });
    });
  }

  /**
   * A cold move whose source could not let go: the target's copy, stopped and never run since it arrived, is
   * removed like an aborted incoming VM (audited `vm.migration-aborted`).
   */
  async discardArrived(vmId: string, ctx: RequestContext | undefined, reason: string): Promise<void> {
    const { core } = this;
    const vm = await core.d.repo.getById(vmId).catch(() => undefined);
    if (!vm) return;
    await core.locked(vm, async (fresh) => {
      if (fresh.state !== "stopped" && fresh.state !== "incoming") throw new VigilError("VIGIL_INVALID_STATE", `Cannot discard VM ${q(fresh.name)}: it is ${fresh.state}`);
      await this.discardLocked(fresh, "migration-aborted");
      await core.d.audit.append({ ...this.actorOf(ctx), action: "vm.migration-aborted", target: core.target(fresh), result: "ok", details: { reason } });
    });
  }

  private async discardLocked(vm: VmRecord, how: string): Promise<void> {
    const { core } = this;
    const db = core.d.repo.db;
    await this.killQuietly(vm);
    await this.removal.removeVm(vm, how, true);
    await db.deleteFrom("generations").where("vm_id", "=", vm.id).execute();
    await db.deleteFrom("vm_locations").where("vm_id", "=", vm.id).execute();
    await forgetVmState(core, vm);
  }

  /** Kills the VM's QEMU (through its runtime, or by pid if still this VM's), removes its cgroups, unplugs its NICs. */
  private async killQuietly(vm: VmRecord): Promise<void> {
    const { core } = this;
    const rt = core.runtimes.get(vm.id);
    // A QEMU the daemon lost (it died mid-start): the jail helper's root-owned pid file still names it.
    const pid = vm.pid ?? readPidFile(jailPidFile(core.layout(vm)));
    if (rt) await rt.kill("migration");
    else if (pid !== undefined && isQemuOf(pid, vm.id)) {
      signal(pid, "SIGKILL");
      await waitForExit(pid, 10_000);
    }
    core.runtimes.delete(vm.id);
    removeCgroups(hostCgroupSpecs(vm.id));
    await unplugNics(core, vm);
  }

  /**
   * On the source, once the target has the VM (its migration completed, or its cold copy committed): QEMU quits
   * (killed if it does not), NICs are unplugged, the row and the vigil-made files go (through the data registry:
   * `migrated-out`), the monotonic store and IDS watch go (the target holds them now); the location history
   * records the target host and `vm.migrated-out` names it. The generation log stays, as for a destroyed VM.
   */
  async releaseOutgoing(vmId: string, targetHost: string, ctx?: RequestContext, details: Record<string, unknown> = {}): Promise<void> {
    const { core } = this;
    const { d } = core;
    const vm = await d.repo.getById(vmId);
    await core.locked(vm, async (fresh) => {
      assertAllowed("migrate", fresh.name, fresh.state, "release");
      // A cold move copied a stopped VM: one started meanwhile is not quit here (its copy is stale).
      if (details.how === "cold" && fresh.state !== "stopped" && fresh.state !== "crashed") throw new VigilError("VIGIL_INVALID_STATE", `Cannot release VM ${q(fresh.name)} after a cold move: it is ${fresh.state} again`);
      const rt = core.runtimes.get(vmId);
      if (rt) {
        rt.expectedExit = "stop";
        await rt.qmp.execute("quit").catch(() => undefined);
        const quit = await Promise.race([rt.exited.then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), QUIT_TIMEOUT_MS).unref())]);
        if (!quit) await rt.kill("migrated out");
      }
      await this.killQuietly(fresh);
      await this.removal.removeVm(fresh, "migrated-out", false);
      await d.locations.moveTo(vmId, targetHost, `(migrated to ${targetHost})`);
      await forgetVmState(core, fresh);
      await d.audit.append({ ...this.actorOf(ctx), action: "vm.migrated-out", target: core.target(fresh), result: "ok", details: { to: targetHost, from: d.hostName, state: fresh.state, ...details } });
    });
  }
}

/**
 * The per-VM state outside the `vms` row that must not stay behind when a VM leaves this host (or an incoming one
 * is given up): its monotonic store namespace, unless another VM here shares it (`vtime link`), and its IDS watch
 * and baselines (rows of the inventory's kv table; the IDS forgets a watch whose VM is gone), and its own posture
 * gate policy.
 */
async function forgetVmState(core: VmCore, vm: VmRecord): Promise<void> {
  const db = core.d.repo.db;
  const sharer = await db.selectFrom("vms").select("id").where("vtime_ns", "=", vm.vtimeNs).where("id", "!=", vm.id).executeTakeFirst();
  if (!sharer) {
    await db.deleteFrom("vtime_counters").where("ns", "=", vm.vtimeNs).execute();
    await db.deleteFrom("vtime_records").where("ns", "=", vm.vtimeNs).execute();
  }
  for (const prefix of ["introspection.watch.", "introspection.baseline."]) await db.deleteFrom("kv").where("key", "=", `${prefix}${vm.id}`).execute();
  await db.deleteFrom("kv").where("key", "like", `introspection.archive.${vm.id}.%`).execute();
  // Its own gate policy went with it in the dossier (vm_postures goes with the vms row).
  await db.deleteFrom("posture_policies").where("scope", "=", `vm:${vm.name}`).execute();
}
