/**
 * A VM's bridged NICs on vigil's switch (docs/network.md, "VM NICs"): before QEMU starts each one is attached
 * (tap created in vigil's netns, bridged, address and DHCP lease, firewall rules) through the `network` dependency,
 * and the jail helper opens the taps; after QEMU exits — stop, kill, crash, guest power-off, failed start — each one
 * is detached. A daemon restart with the VM still running re-plumbs nothing: the taps are still there.
 */
import { VigilError, messageOf, q } from "../errors.ts";
import { BRIDGED_NEEDS_JAIL } from "../qemu/argv.ts";
import type { AttachedNic } from "../network/types.ts";
import { bridgedNics } from "./spec.ts";
import { jailUidOf } from "./jail-uids.ts";
import type { JailTap } from "./jail-launch.ts";
import type { VmRecord } from "./vm-repository.ts";
import type { VmCore } from "./vm-core.ts";

/** Refuses, before anything changes, a start that cannot plug the VM's bridged NICs in. */
export function checkNicsStartable(core: VmCore, vm: VmRecord, jailed: boolean): void {
  const bridged = bridgedNics(vm.spec);
  if (bridged.length === 0) return;
  const which = bridged.map((n) => `${n.name} (network ${q(n.network)})`).join(", ");
  if (!jailed) throw new VigilError("VIGIL_INVALID_STATE", `Cannot start VM ${q(vm.name)}: ${BRIDGED_NEEDS_JAIL}, and VIGIL_JAIL=off; its bridged NICs: ${which}`, { field: "nics" });
  if (!core.d.network) throw new VigilError("VIGIL_HOST", `Cannot start VM ${q(vm.name)}: its NICs ${which} are bridged, and this daemon has no virtual switch`, { field: "nics" });
}

/** Attaches every bridged NIC (idempotent per NIC); what the jail's `--tap` needs. On failure the caller unplugs. */
export async function plugNics(core: VmCore, vm: VmRecord): Promise<JailTap[]> {
  const bridged = bridgedNics(vm.spec);
  if (bridged.length === 0) return [];
  const network = core.d.network;
  if (!network) throw new VigilError("VIGIL_HOST", `Cannot start VM ${q(vm.name)}: this daemon has no virtual switch`, { field: "nics" });
  const uid = await jailUidOf(core.d.repo.db, vm.id);
  const plug = { id: vm.id, name: vm.name, labels: vm.labels, uid, gid: uid };
  const taps: JailTap[] = [];
  const attached: AttachedNic[] = [];
  for (const nic of bridged) {
    const a = await network.attach(plug, { name: nic.name, network: nic.network, mac: nic.mac });
    const { netnsPath, ...info } = a;
    attached.push(info);
    taps.push({ nic: nic.name, netnsPath, tap: a.tap });
    core.attachedNics.set(vm.id, [...attached]);
  }
  return taps;
}

/**
 * After a daemon restart, for a VM found running: what its NICs are plugged into, read back from the switch (for
 * the view). Nothing is attached or detached: the taps are still there, held by its QEMU.
 */
export async function rememberAttachedNics(core: VmCore, vm: VmRecord): Promise<void> {
  const network = core.d.network;
  if (bridgedNics(vm.spec).length === 0 || !network?.attached) return;
  try {
    const mine = (await network.attached()).filter((a) => a.vmId === vm.id);
    if (mine.length > 0) core.attachedNics.set(vm.id, mine);
  } catch (err) {
    core.d.log.warn({ vm: vm.name, err: messageOf(err) }, "Cannot read back a reattached VM's NICs from the switch");
  }
}

/** Detaches every bridged NIC after QEMU is gone; failures are logged (each NIC is tried), never thrown. */
export async function unplugNics(core: VmCore, vm: VmRecord): Promise<void> {
  const bridged = bridgedNics(vm.spec);
  core.attachedNics.delete(vm.id);
  const network = core.d.network;
  if (bridged.length === 0 || !network) return;
  for (const nic of bridged) {
    try {
      await network.detach(vm.id, nic.name);
    } catch (err) {
      core.d.log.error({ vm: vm.name, nic: nic.name, err: messageOf(err) }, "Cannot detach a NIC from the switch");
    }
  }
}
