/**
 * VM lifecycle: start, stop, kill, pause, resume, restart, and `operate` (the locked handle capabilities such as
 * snapshots and clones combine these steps with). Each public operation authorizes and audits through the
 * Guard, takes the VM's operation lock, checks the state machine, and either completes or puts the VM back in
 * the state it was in. The `*Locked` steps assume the caller holds the lock; vm-removal uses `killLocked`.
 */
import { existsSync } from "node:fs";
import { VigilError, messageOf, q } from "../errors.ts";
import { buildArgv, type LaunchPlan } from "../qemu/argv.ts";
import { ensurePrivateDir, ensurePrivateFile, restrictToOwner } from "../host/private-dir.ts";
import { QEMU_BINARY, isQemuOf, signal, startQemu, waitForExit } from "../host/qemu-process.ts";
import { VmRuntime } from "../host/vm-runtime.ts";
import { makeFifo, pipeEnds } from "../host/fifo.ts";
import { consoleBackup } from "../host/console-log.ts";
import { installLoopbackGuard } from "../host/loopback-guard.ts";
import { checkJailAvailable, hostCgroupSpecs, jailEnabled, removeCgroups } from "../host/jail.ts";
import { handOverFiles, planJail, reclaimJailDirs } from "./jail-launch.ts";
import { recordedPlaces, type RecordedPlaces } from "./recorded-layers.ts";
import type { RequestContext } from "../auth/guard.ts";
import type { Permission } from "../auth/permissions.ts";
import { checkHostLimits, checkStartQuota } from "./host-limits.ts";
import { assertAllowed, type VmState } from "./state-machine.ts";
import type { VmRecord } from "./vm-repository.ts";
import { diskFile, type VmView } from "./vm-view.ts";
import type { VmCore } from "./vm-core.ts";
import type { VmSupervisor } from "./vm-supervision.ts";
import { eraseLegacyRamFile } from "./vm-recovery.ts";
import { checkNotExpired } from "./vm-ownership.ts";
import { checkNicsStartable, plugNics, unplugNics } from "./vm-nics.ts";
import { bridgedNics, openUserNics } from "./spec.ts";
import type { BeforeContHook, LockedVm, StartOptions, StopResult } from "./vm-types.ts";

/** How long a stop waits for the guest to power off after the ACPI button before it asks QEMU to quit. */
export const DEFAULT_STOP_TIMEOUT_MS = 60_000;

export class VmLifecycle {
  private readonly beforeContHooks: BeforeContHook[] = [];
  private readonly beforeResumeHooks: BeforeContHook[] = [];
  private readonly beforeStopHooks: BeforeContHook[] = [];

  constructor(
    private readonly core: VmCore,
    private readonly supervisor: VmSupervisor,
  ) {}

  /** Capabilities register work that must happen on every start before the guest runs. */
  addBeforeContHook(hook: BeforeContHook): void {
    this.beforeContHooks.push(hook);
  }

  /** Work that must happen before vigil asks a running guest to power off (a recording takes its end point). */
  addBeforeStopHook(hook: BeforeContHook): void {
    this.beforeStopHooks.push(hook);
  }

  /** Work that must happen before a paused VM runs again (the posture gate: a resume is a wake-up too). */
  addBeforeResumeHook(hook: BeforeContHook): void {
    this.beforeResumeHooks.push(hook);
  }

  /**
   * One guarded, locked operation on an existing VM for capabilities built on the lifecycle (snapshots, clones,
   * export): authorizes `op.permission` on the VM, audits the outcome, holds the VM's lock while `fn` runs, and
   * hands `fn` the lifecycle steps it may combine.
   */
  async operate<T>(
    ctx: RequestContext,
    name: string,
    op: { action: string; permission: Permission; details?: Record<string, unknown> | undefined },
    fn: (h: LockedVm) => Promise<T>,
    describe?: (result: T) => Record<string, unknown>,
  ): Promise<T> {
    const { core } = this;
    const vm = await core.lookup(ctx, name, op.action);
    return core.d.guard.run(
      ctx,
      { action: op.action, permission: op.permission, target: core.target(vm), owner: vm.owner, details: op.details },
      () =>
        core.locked(vm, async (fresh) => {
          const h: LockedVm = {
            vm: fresh,
            layout: core.layout(fresh),
            reload: () => core.d.repo.getById(vm.id),
            update: (change) => core.d.repo.update(vm.id, change),
            runtime: () => core.runtime(fresh),
            start: async (options = {}) => this.startLocked(await core.d.repo.getById(vm.id), options),
            stop: async (timeoutMs = DEFAULT_STOP_TIMEOUT_MS) => this.stopLocked(await core.d.repo.getById(vm.id), timeoutMs),
            kill: async (reason) => this.killLocked(await core.d.repo.getById(vm.id), reason),
          };
          return fn(h);
        }),
      describe,
    );
  }

  async start(ctx: RequestContext, name: string, options: StartOptions = {}): Promise<VmView> {
    const { core } = this;
    const vm = await core.lookup(ctx, name, "vm.start");
    return core.d.guard.run(
      ctx,
      { action: "vm.start", permission: "vm.control", target: core.target(vm), owner: vm.owner, details: { wait: options.wait ?? false, paused: options.paused ?? false } },
      async () => {
        const started = await core.locked(vm, async (fresh) => {
          assertAllowed("start", fresh.name, fresh.state);
          if (fresh.isTemplate) throw new VigilError("VIGIL_INVALID_STATE", `Cannot start VM ${q(fresh.name)}: it is a template (clone it instead)`);
          checkNotExpired(core.d.policy, fresh, `Cannot start VM ${q(fresh.name)}`);
          return this.startLocked(fresh, options);
        });
        if (options.wait && started.spec.agent && !options.paused) {
          const t0 = performance.now();
          await this.waitForAgent(started, options.waitTimeoutMs ?? 120_000);
          core.d.log.debug({ vm: vm.name, phase: "agent answered", ms: Math.round(performance.now() - t0) }, "start timing");
        }
        return core.view(await core.d.repo.getById(vm.id));
      },
      (v) => ({ pid: v.pid, accelerator: v.accelerator, vmgenid: v.vmgenid }),
    );
  }

  /** Where this VM's disk layers may be, from the records (the jail follows no other backing file). */
  private places(vm: VmRecord): Promise<RecordedPlaces> {
    return recordedPlaces(vm, this.core.d.home.vmsDir, (id) => this.core.d.repo.getById(id));
  }

  private launchPlan(vm: VmRecord, incoming = false, record?: StartOptions["record"]): LaunchPlan {
    const l = this.core.layout(vm);
    return {
      ...(incoming ? { incoming: "defer" as const } : {}),
      ...(record ? { rr: { mode: "record" as const, logFile: record.logFile } } : {}),
      spec: vm.spec,
      uuid: vm.id,
      vmgenid: vm.vmgenid,
      // Record/replay counts instructions: TCG only.
      accel: record ? "tcg" : this.core.d.accel.accel,
      paths: l,
      diskFiles: Object.fromEntries(vm.spec.disks.map((d) => [d.name, diskFile(l.disksDir, d.name)])),
    };
  }

  /** The exact QEMU command line vigil runs for this VM (like Proxmox's `qm showcmd`). */
  async qemuCommand(ctx: RequestContext, name: string): Promise<{ binary: string; argv: string[] }> {
    const { core } = this;
    const vm = await core.lookup(ctx, name, "vm.showcmd");
    await core.d.guard.authorize(ctx, { action: "vm.showcmd", permission: "vm.read", target: core.target(vm), owner: vm.owner, readOnly: true });
    if (!jailEnabled()) return { binary: QEMU_BINARY, argv: buildArgv(this.launchPlan(vm)) };
    // A bridged NIC's tap exists only while the VM runs: named as the switch attached it, else a placeholder.
    const attached = core.attachedNics.get(vm.id) ?? [];
    const netnsPath = core.d.network?.netns?.().path ?? "/run/netns/(vigil's netns)";
    const taps = bridgedNics(vm.spec).map((n) => ({ nic: n.name, netnsPath, tap: attached.find((a) => a.nic === n.name)?.tap ?? `(tap of ${n.name}, made at start)` }));
    const jail = await planJail(core.d.repo.db, vm, core.layout(vm), core.d.accel.accel, await this.places(vm), taps, (backing, tapFds) => buildArgv({ ...this.launchPlan(vm), backing, tapFds }));
    return { binary: jail.binary, argv: jail.argv };
  }

  /**
   * Starts QEMU for a VM whose lock is held. On failure the VM is back in its previous state. `incoming`: the
   * target of a migration (vm-migration.ts) — the same jail, NICs, firewall and runtime hooks, but QEMU gets
   * `-incoming defer`, no before-cont hook runs, no `cont` is sent and the state stays `incoming`.
   */
  async startLocked(vm: VmRecord, options: StartOptions, incoming = false): Promise<VmRecord> {
    const { core } = this;
    const { d } = core;
    // The host that starts a VM may not be the one that created it: check its limits here too.
    const host = core.hostFacts();
    checkHostLimits(vm.spec, host, `Cannot start VM ${q(vm.name)}`);
    // Callers check this before they change anything; here it holds for every path that starts QEMU.
    checkNotExpired(d.policy, vm, `Cannot start VM ${q(vm.name)}`);
    // An open NIC reaches the host's loopback through slirp unless the nftables guard is in place (re-installed
    // here: idempotent, and someone may have flushed the ruleset since the daemon started).
    const open = openUserNics(vm.spec).map((n) => n.name);
    if (open.length > 0) {
      await installLoopbackGuard().catch((err: unknown) => {
        throw new VigilError("VIGIL_HOST", `Cannot start VM ${q(vm.name)}: its open NIC ${open.join(", ")} needs the host loopback guard (nftables), which cannot be installed: ${messageOf(err)}`, { field: "nics", cause: err });
      });
    }
    // Never silently unjailed: VIGIL_JAIL=off is the one, logged, opt-out (docs/jail.md).
    const jailed = jailEnabled();
    checkNicsStartable(core, vm, jailed);
    const previous = vm.state;
    const l = core.layout(vm);
    const t0 = performance.now();
    const mark = (phase: string) => d.log.debug({ vm: vm.name, phase, ms: Math.round(performance.now() - t0) }, "start timing");
    // One start at a time passes this point: the memory of live VMs (this one marked starting) is then exact.
    await core.locks.run("quota:live-memory", async () => {
      const usage = await core.usage(vm.owner);
      checkStartQuota(`Cannot start VM ${q(vm.name)}`, vm.owner, usage.owner, await d.users.quotasFor(vm.owner, d.quotas ?? {}), vm.spec.memoryMiB, usage.hostLiveMiB, host);
      // An incoming VM stays `incoming` while its QEMU starts: a daemon that dies here aborts it at restart.
      if (!incoming) await d.repo.update(vm.id, { state: "starting" });
    });
    let pid: number | undefined;
    if (!jailed) d.log.warn({ vm: vm.name }, "VIGIL_JAIL=off: starting QEMU without its jail");
    try {
      if (jailed) {
        checkJailAvailable();
        reclaimJailDirs(l);
      }
      ensurePrivateDir(l.dir);
      ensurePrivateDir(l.runDir);
      // Guest RAM is a memfd inside QEMU (qemu/argv.ts): no file to create, register or remove.
      await eraseLegacyRamFile(core, vm);
      // Created here, empty and 0600, so that QEMU (which would create it 0644) fills a file only vigil's user can read.
      ensurePrivateFile(l.consoleLog);
      // A recording's UARTs (qemu/argv.ts): the FIFOs exist, 0600 and handed to QEMU's uid, before QEMU opens them.
      const fifos = options.record ? [l.serialPipe, ...(vm.spec.agent ? [l.agentPipe] : [])].flatMap((base) => Object.values(pipeEnds(base))) : [];
      for (const f of fifos) await makeFifo(f);
      // Disks made by an older vigil (0644) are repaired here, before the guest writes to them again.
      for (const disk of vm.spec.disks) {
        const file = diskFile(l.disksDir, disk.name);
        if (existsSync(file)) restrictToOwner(file);
      }
      // Bridged NICs: tap, bridge port, address, firewall rules in place before QEMU exists (vm-nics.ts).
      const taps = jailed ? await plugNics(core, vm) : [];
      const plan = this.launchPlan(vm, incoming, options.record);
      const jail = jailed ? await planJail(d.repo.db, vm, l, plan.accel, await this.places(vm), taps, (backing, tapFds) => buildArgv({ ...plan, backing, tapFds })) : undefined;
      if (jail) handOverFiles(vm, l, jail.confinement.uid, fifos);
      const started = await startQemu(jail ? [] : buildArgv(plan), { qmpSocket: l.qmpSocket, pidFile: l.pidFile, qemuLog: l.qemuLog, sockets: [l.qmpSocket, l.serialSocket, l.agentSocket, l.vtimeSocket], jail });
      pid = started.pid;
      mark("qmp socket open");
      const rt = await VmRuntime.attach(vm.id, pid, l, d.log, started.exited);
      rt.recording = options.record !== undefined;
      this.supervisor.adopt(vm, rt);
      if (!incoming) {
        for (const hook of this.beforeContHooks) await hook(vm, rt);
        await options.beforeCont?.(rt);
        if (!options.paused) await rt.qmp.execute("cont");
        mark("guest running");
      }
      const updated = await d.repo.update(vm.id, { state: incoming ? "incoming" : options.paused ? "paused" : "running", pid, accelerator: plan.accel });
      for (const [path, purpose] of [[l.consoleLog, "console-log"], [consoleBackup(l.consoleLog), "console-log"], [l.qemuLog, "qemu-log"]] as const) {
        await d.registry.register(vm.id, path, purpose, { hash: false });
      }
      return updated;
    } catch (err) {
      const rt = core.runtimes.get(vm.id);
      if (rt) await rt.kill("start failed");
      else if (pid !== undefined) {
        signal(pid, "SIGKILL");
        await waitForExit(pid, 5000);
      }
      core.runtimes.delete(vm.id);
      if (jailed) removeCgroups(hostCgroupSpecs(vm.id));
      await unplugNics(core, vm);
      await d.repo.update(vm.id, { state: previous, pid: null });
      throw err;
    }
  }

  private async waitForAgent(vm: VmRecord, timeoutMs: number): Promise<void> {
    const rt = this.core.runtime(vm);
    const agent = await rt.agentClient();
    await Promise.race([
      agent.waitUntilAnswering(timeoutMs),
      rt.exited.then((r) => {
        throw new VigilError("VIGIL_QEMU", `VM ${q(vm.name)} exited while waiting for its agent (${r.kind === "crashed" ? r.detail : r.reason})`);
      }),
    ]);
  }

  async stop(ctx: RequestContext, name: string, options: { timeoutMs?: number | undefined } = {}): Promise<StopResult & { vm: VmView }> {
    const { core } = this;
    const vm = await core.lookup(ctx, name, "vm.stop");
    return core.d.guard.run(
      ctx,
      { action: "vm.stop", permission: "vm.control", target: core.target(vm), owner: vm.owner },
      () =>
        core.locked(vm, async (fresh) => {
          assertAllowed("stop", fresh.name, fresh.state);
          const result = await this.stopLocked(fresh, options.timeoutMs ?? DEFAULT_STOP_TIMEOUT_MS);
          return { ...result, vm: core.view(await core.d.repo.getById(vm.id)) };
        }),
      (r) => ({ how: r.how }),
    );
  }

  /** ACPI power button, then QMP quit, then SIGKILL: each step only if the previous one did not work in time. */
  async stopLocked(vm: VmRecord, timeoutMs: number): Promise<StopResult> {
    const { core } = this;
    const rt = core.runtime(vm);
    await core.d.repo.update(vm.id, { state: "stopping" });
    rt.expectedExit = "stop";
    for (const hook of this.beforeStopHooks) {
      await hook(vm, rt).catch((err: unknown) => core.d.log.warn({ vm: vm.name, err: messageOf(err) }, "A before-stop step failed"));
    }
    let how: StopResult["how"] = "acpi";
    const within = (ms: number) => Promise.race([rt.exited.then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), ms).unref())]);
    try {
      if (vm.state === "paused") await rt.qmp.execute("cont"); // a paused guest cannot handle the power button
      await rt.qmp.execute("system_powerdown");
    } catch {
      /* QEMU may already be going away */
    }
    if (!(await within(timeoutMs))) {
      how = "quit";
      await rt.qmp.execute("quit").catch(() => undefined);
      if (!(await within(5000))) {
        how = "killed";
        await rt.kill("stop");
      }
    }
    core.runtimes.delete(vm.id);
    await unplugNics(core, vm);
    await core.d.repo.update(vm.id, { state: "stopped", pid: null });
    return { how };
  }

  async kill(ctx: RequestContext, name: string): Promise<VmView> {
    const { core } = this;
    const vm = await core.lookup(ctx, name, "vm.kill");
    return core.d.guard.run(ctx, { action: "vm.kill", permission: "vm.control", target: core.target(vm), owner: vm.owner }, () =>
      core.locked(vm, async (fresh) => {
        assertAllowed("kill", fresh.name, fresh.state);
        await this.killLocked(fresh, "kill");
        return core.view(await core.d.repo.getById(vm.id));
      }),
    );
  }

  /** SIGKILL through the runtime, or by pid if vigil has none but the process is still this VM's QEMU. */
  async killLocked(vm: VmRecord, reason: string): Promise<void> {
    const { core } = this;
    const rt = core.runtimes.get(vm.id);
    if (rt) await rt.kill(reason);
    else if (vm.pid !== null && isQemuOf(vm.pid, vm.id)) {
      signal(vm.pid, "SIGKILL");
      await waitForExit(vm.pid, 10_000);
    }
    core.runtimes.delete(vm.id);
    removeCgroups(hostCgroupSpecs(vm.id));
    await unplugNics(core, vm);
    await core.d.repo.update(vm.id, { state: "stopped", pid: null });
  }

  /** Pause (QMP `stop`) or resume (QMP `cont`) a live VM; the record's state follows. */
  async qmpTransition(ctx: RequestContext, name: string, action: "pause" | "resume", command: string, to: VmState): Promise<VmView> {
    const { core } = this;
    const vm = await core.lookup(ctx, name, `vm.${action}`);
    return core.d.guard.run(ctx, { action: `vm.${action}`, permission: "vm.control", target: core.target(vm), owner: vm.owner }, () =>
      core.locked(vm, async (fresh) => {
        assertAllowed(action, fresh.name, fresh.state);
        if (action === "resume") for (const hook of this.beforeResumeHooks) await hook(fresh, core.runtime(fresh));
        await core.runtime(fresh).qmp.execute(command);
        return core.view(await core.d.repo.update(vm.id, { state: to }));
      }),
    );
  }

  /** A fresh QEMU process: stop (ACPI, with fallbacks) then start, under one lock. The vmgenid is unchanged. */
  async restart(ctx: RequestContext, name: string, options: StartOptions & { timeoutMs?: number | undefined } = {}): Promise<VmView> {
    const { core } = this;
    const vm = await core.lookup(ctx, name, "vm.restart");
    return core.d.guard.run(ctx, { action: "vm.restart", permission: "vm.control", target: core.target(vm), owner: vm.owner }, async () => {
      const started = await core.locked(vm, async (fresh) => {
        assertAllowed("restart", fresh.name, fresh.state);
        checkNotExpired(core.d.policy, fresh, `Cannot restart VM ${q(fresh.name)}`);
        await this.stopLocked(fresh, options.timeoutMs ?? DEFAULT_STOP_TIMEOUT_MS);
        return this.startLocked(await core.d.repo.getById(vm.id), options);
      });
      if (options.wait && started.spec.agent) await this.waitForAgent(started, options.waitTimeoutMs ?? 120_000);
      return core.view(await core.d.repo.getById(vm.id));
    });
  }
}
