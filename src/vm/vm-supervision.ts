/**
 * Supervision of live QEMUs: once vigil is connected to a VM's QEMU (started by vm-lifecycle or found again by
 * vm-recovery) it is "adopted" — put in the shared runtimes map, its console log capped, the capabilities'
 * runtime hooks attached — and its exit is recorded: a VM whose QEMU goes away on its own ends stopped or crashed,
 * audited by the system actor. `close()` detaches without stopping anything (VMs outlive the daemon).
 */
import { messageOf } from "../errors.ts";
import type { VmRuntime, ExitReason } from "../host/vm-runtime.ts";
import { SYSTEM_ACTOR } from "../auth/permissions.ts";
import { isLive } from "./state-machine.ts";
import type { VmRecord } from "./vm-repository.ts";
import type { VmCore } from "./vm-core.ts";
import { ConsoleCaps } from "./vm-console.ts";
import { unplugNics } from "./vm-nics.ts";

export class VmSupervisor {
  private readonly consoleCaps: ConsoleCaps;
  /** Set by `close()`: exits seen after it are vigil detaching, not the VM going down. */
  private closing = false;
  private readonly runtimeHooks: Array<(vm: VmRecord, rt: VmRuntime) => void> = [];

  constructor(private readonly core: VmCore) {
    this.consoleCaps = new ConsoleCaps(core.d.consoleLogMaxBytes, core.d.log);
  }

  /** Capabilities that attach to every live QEMU (started or found again after a restart) register here. */
  addRuntimeHook(hook: (vm: VmRecord, rt: VmRuntime) => void): void {
    this.runtimeHooks.push(hook);
  }

  /** Starts watching a runtime: when its QEMU exits, the VM's state follows. */
  adopt(vm: VmRecord, rt: VmRuntime): void {
    this.core.runtimes.set(vm.id, rt);
    const cap = this.consoleCaps.start(vm, rt.layout.consoleLog);
    for (const hook of this.runtimeHooks) hook(vm, rt);
    void rt.exited.then((reason) => {
      this.consoleCaps.release(vm.id, cap);
      return this.onExit(vm.id, rt, reason);
    });
  }

  private async onExit(id: string, rt: VmRuntime, reason: ExitReason): Promise<void> {
    const { d, locks, runtimes } = this.core;
    if (runtimes.get(id) === rt) runtimes.delete(id);
    if (this.closing) return;
    try {
      await locks.run(id, async () => {
        const vm = await d.repo.getById(id).catch(() => undefined);
        if (!vm || !isLive(vm.state) || runtimes.has(id)) return; // an operation already recorded the exit
        const crashed = reason.kind === "crashed";
        // Under the VM's lock and only when no operation recorded the exit: a restart's new taps are never touched.
        await unplugNics(this.core, vm);
        await d.repo.update(id, { state: crashed ? "crashed" : "stopped", pid: null });
        await d.audit.append({
          actor: SYSTEM_ACTOR.name,
          action: crashed ? "vm.crashed" : "vm.stopped",
          target: { kind: "vm", id, name: vm.name },
          result: "ok",
          details: crashed ? { detail: reason.detail } : { reason: reason.reason },
        });
        d.log.info({ vm: vm.name, reason }, crashed ? "VM crashed" : "VM stopped");
      });
    } catch (err) {
      d.log.error({ vm: id, err: messageOf(err) }, "Cannot record a VM's exit");
    }
  }

  /** Detaches from every QEMU without stopping it: VMs keep running while vigil is away. */
  async close(): Promise<void> {
    this.closing = true;
    this.consoleCaps.stopAll();
    await Promise.all([...this.core.runtimes.values()].map((rt) => rt.detach()));
    this.core.runtimes.clear();
  }
}
