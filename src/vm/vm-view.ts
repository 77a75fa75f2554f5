/**
 * What the API and CLI show of a VM: the record plus its runtime paths and derived flags. One function, so
 * `vm show --json`, `vm list --json` and the events stream all describe a VM the same way.
 */
import { vmLayout } from "../paths.ts";
import { isExpired } from "./expiry.ts";
import type { VmRecord } from "./vm-repository.ts";
import { jailEnabled, observeConfinement } from "../host/jail.ts";
import { SANDBOX } from "../qemu/argv.ts";
import type { AttachedNic } from "../network/types.ts";

export function diskFile(disksDir: string, diskName: string): string {
  return `${disksDir}/${diskName}.qcow2`;
}

export function vmView(vm: VmRecord, vmsDir: string, now = Date.now(), attached: readonly AttachedNic[] = [], sharedStorage?: string) {
  const l = vmLayout(vmsDir, vm.id, vm.spec.storage === "shared" ? sharedStorage : undefined);
  return {
    id: vm.id,
    name: vm.name,
    state: vm.state,
    host: vm.host,
    accelerator: vm.accelerator,
    vmgenid: vm.vmgenid,
    generation: vm.generation,
    pid: vm.pid,
    owner: vm.owner,
    approver: vm.approver,
    purpose: vm.purpose,
    expiresAt: vm.expiresAt,
    expired: isExpired(vm.expiresAt, now),
    labels: vm.labels,
    lineage: vm.lineage,
    template: vm.isTemplate,
    createdBy: vm.createdBy,
    createdAt: vm.createdAt,
    stateChangedAt: vm.stateChangedAt,
    spec: vm.spec,
    /** Bridged NICs plugged into the switch now: their network, address and tap (docs/network.md). */
    nics: attached.map((a) => ({ name: a.nic, network: a.network, mac: a.mac, ip: a.ip, tap: a.tap })),
    paths: {
      dir: l.dir,
      qmpSocket: l.qmpSocket,
      serialSocket: l.serialSocket,
      agentSocket: l.agentSocket,
      consoleLog: l.consoleLog,
      qemuLog: l.qemuLog,
      pidFile: l.pidFile,
      disks: Object.fromEntries(vm.spec.disks.map((d) => [d.name, diskFile(l.disksDir, d.name)])),
    },
    // How QEMU is confined (docs/jail.md): the mode this daemon starts VMs in, QEMU's seccomp options, and for a
    // live VM what the kernel reports about its process.
    confinement: {
      mode: jailEnabled() ? ("jail" as const) : ("off" as const),
      seccomp: SANDBOX,
      process: vm.pid !== null && (vm.state === "running" || vm.state === "paused") ? (observeConfinement(vm.pid) ?? null) : null,
    },
  };
}

export type VmView = ReturnType<typeof vmView>;

/**
 * The few fields an inventory lists of each VM (`GET /v1/vms?view=summary`, the web console's tree and table): no
 * paths, spec details or confinement, which cost a /proc read per live VM and make 10,000 VMs a 20 MB answer.
 */
export function vmSummary(vm: Readonly<VmRecord>, now = Date.now()) {
  return {
    id: vm.id,
    name: vm.name,
    state: vm.state,
    host: vm.host,
    owner: vm.owner,
    purpose: vm.purpose,
    expiresAt: vm.expiresAt,
    expired: isExpired(vm.expiresAt, now),
    labels: vm.labels,
    template: vm.isTemplate,
    generation: vm.generation,
    vcpus: vm.spec.vcpus,
    memoryMiB: vm.spec.memoryMiB,
    stateChangedAt: vm.stateChangedAt,
  };
}

export type VmSummary = ReturnType<typeof vmSummary>;

/** The JSON text of each record's summary without the fields that change with the request, by record (WeakMap). */
const summaryText = new WeakMap<object, string>();

/**
 * `vmSummary(vm)` and its posture as JSON text, for the inventory list of every VM: serializing 10,000 summaries
 * on each request was a third of its time (docs/benchmarks.md, "Web console"). The text of the fields that only a
 * change of the VM changes is kept per record — for a frozen record of the shared list (vm-list-cache.ts) that is
 * exactly until the VM changes, as a change makes a new record — and `expired` (the time of the request) and the
 * posture (another service's) are written every time.
 */
export function vmSummaryJson(vm: Readonly<VmRecord>, now: number, posture: string): string {
  let fixed = summaryText.get(vm);
  if (fixed === undefined) {
    const { expired: _expired, ...rest } = vmSummary(vm, now);
    fixed = JSON.stringify(rest).slice(0, -1); // without its closing brace: the request's fields follow
    if (Object.isFrozen(vm)) summaryText.set(vm, fixed);
  }
  return `${fixed},"expired":${isExpired(vm.expiresAt, now)},"posture":${JSON.stringify(posture)}}`;
}
