// The uids (and equal gids) vigil gives jailed QEMU processes: one per VM, allocated from this range and recorded
// in the inventory. The range sits far above distributions' user and subordinate-id ranges (useradd's SUB_UID
// defaults start at 100000 and hand out 65536 each) so no login user or container mapping shares a VM's uid.
// The network policy (nftables `meta skuid`) and the jail both read it from here: one definition.
export const VM_UID_BASE = 1_800_000_000;
export const VM_UID_COUNT = 1_000_000;

export function isVmUid(uid: number): boolean {
  return Number.isInteger(uid) && uid >= VM_UID_BASE && uid < VM_UID_BASE + VM_UID_COUNT;
}
