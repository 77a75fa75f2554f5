/**
 * What the API and CLI show of a VM: the record plus its runtime paths and derived flags. One function, so
 * `vm show --json`, `vm list --json` and the events stream all describe a VM the same way.
 */
import { vmLayout } from "../paths.ts";
import { isExpired } from "./expiry.ts";
import type { VmRecord } from "./vm-repository.ts";

export function diskFile(disksDir: string, diskName: string): string {
  return `${disksDir}/${diskName}.qcow2`;
}

export function vmView(vm: VmRecord, vmsDir: string, now = Date.now()) {
  const l = vmLayout(vmsDir, vm.id);
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
  };
}

export type VmView = ReturnType<typeof vmView>;
