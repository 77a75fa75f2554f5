/**
 * The state every part of VmService shares, held in exactly one place: the dependencies, the per-VM (and
 * per-name, per-owner, quota) operation locks, and the map of live QEMU runtimes. The parts (vm-lifecycle,
 * vm-supervision, vm-creation, vm-removal, …) each receive this one object, so two operations on one VM take
 * the same lock whichever part runs them, and "is this VM's QEMU connected" has one answer.
 */
import { VigilError, errors, q } from "../errors.ts";
import { vmLayout, type VmLayout } from "../paths.ts";
import type { VmRuntime } from "../host/vm-runtime.ts";
import type { RequestContext } from "../auth/guard.ts";
import { KeyedMutex } from "../util/mutex.ts";
import { readHostFacts, specDiskMiB, type HostFacts, type OwnerUsage } from "./host-limits.ts";
import { isLive } from "./state-machine.ts";
import type { VmRecord } from "./vm-repository.ts";
import { vmView, type VmView } from "./vm-view.ts";
import type { VmServiceDeps } from "./vm-types.ts";
import type { AttachedNic } from "../network/types.ts";

export class VmCore {
  /** Keys: a VM id (its operation lock), `name:<name>`, `owner:<owner>` and `quota:live-memory`. */
  readonly locks = new KeyedMutex();
  /** The QEMU vigil is connected to, by VM id; set by `VmSupervisor.adopt`, removed when it exits or is stopped. */
  readonly runtimes = new Map<string, VmRuntime>();
  /** A recording VM's console is the recorder's relay, not QEMU's socket (src/recording/serial-relay.ts), by VM id. */
  readonly consoleRelays = new Map<string, string>();
  /** Bridged NICs this daemon plugged in, by VM id (vm-nics.ts), shown in the view while attached. */
  readonly attachedNics = new Map<string, AttachedNic[]>();

  constructor(readonly d: VmServiceDeps) {}

  hostFacts(): HostFacts {
    return (this.d.hostFacts ?? readHostFacts)();
  }

  layout(vm: { id: string; spec?: { storage?: "local" | "shared" | undefined } }): VmLayout {
    if (vm.spec?.storage !== "shared") return vmLayout(this.d.home.vmsDir, vm.id);
    if (this.d.sharedStorage === undefined) {
      throw new VigilError("VIGIL_BAD_REQUEST", `VM ${q(vm.id)} keeps its disks on shared storage, and this host has none (start the agent with --shared-storage DIR)`, { field: "storage" });
    }
    return vmLayout(this.d.home.vmsDir, vm.id, this.d.sharedStorage);
  }

  view(vm: VmRecord): VmView {
    return vmView(vm, this.d.home.vmsDir, Date.now(), this.attachedNics.get(vm.id), this.d.sharedStorage);
  }

  target(vm: VmRecord) {
    return { kind: "vm", id: vm.id, name: vm.name };
  }

  /** The live runtime of a VM that must be running. */
  runtime(vm: VmRecord): VmRuntime {
    const rt = this.runtimes.get(vm.id);
    if (!rt) throw new VigilError("VIGIL_INVALID_STATE", `Cannot reach VM ${q(vm.name)}: vigil has no connection to its QEMU (state ${vm.state})`);
    return rt;
  }

  /** Runs `fn` under the VM's operation lock with a freshly read record. */
  locked<T>(vm: VmRecord, fn: (fresh: VmRecord) => Promise<T>): Promise<T> {
    return this.locks.run(vm.id, async () => fn(await this.d.repo.getById(vm.id)));
  }

  /**
   * The VM named `name` for an operation by `ctx`. A VM the actor may not even read is answered exactly like a
   * name that does not exist (404), so names are not disclosed across owners; both are audited as denied
   * (`vm.read` missing). Actors who may read every VM just get the 404 for a missing name.
   */
  async lookup(ctx: RequestContext, name: string, action: string): Promise<VmRecord> {
    const vm = await this.d.repo.findByName(name);
    await this.d.guard.authorizeOrHide(ctx, { action, permission: "vm.read", target: { kind: "vm", name }, owner: vm?.owner, readOnly: true }, errors.vmNotFound(name));
    if (!vm) throw errors.vmNotFound(name);
    return vm;
  }

  /**
   * What `owner` holds now, and the memory of every live VM on this host (all owners): the input of the create
   * quota (vm-creation) and the start quota (vm-lifecycle).
   */
  async usage(owner: string): Promise<{ owner: OwnerUsage; hostLiveMiB: number }> {
    const all = await this.d.repo.listShared();
    const mine = all.filter((v) => v.owner === owner);
    const live = (vms: readonly Readonly<VmRecord>[]) => vms.filter((v) => isLive(v.state)).reduce((sum, v) => sum + v.spec.memoryMiB, 0);
    return { owner: { vms: mine.length, memoryMiB: live(mine), diskMiB: mine.reduce((sum, v) => sum + specDiskMiB(v.spec), 0) }, hostLiveMiB: live(all.filter((v) => v.host === this.d.hostName)) };
  }
}
