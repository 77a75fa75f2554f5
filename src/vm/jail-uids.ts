/**
 * Per-VM uids for jailed QEMUs, recorded in the inventory. Allocation is monotonic over VM_UID_BASE ..
 * VM_UID_BASE + VM_UID_COUNT - 1: a VM keeps its uid for life, and a uid is never given to a second VM (not even
 * after the first is destroyed), so no file left by one VM's QEMU is ever owned by another's. Each uid is also
 * claimed machine-wide (host/uid-claims.ts), so a second daemon on the machine never hands out the same one.
 */
import type { Db } from "../inventory/db.ts";
import { VigilError } from "../errors.ts";
import { VM_UID_BASE, VM_UID_COUNT } from "../host/vm-uid-range.ts";
import { claimUid, confirmUid } from "../host/uid-claims.ts";
import { vigilUidClaims } from "../paths.ts";

/** The VM's uid, allocated on first use; `claims` is the machine-wide claims directory (tests pass their own). */
export async function jailUidOf(db: Db, vmId: string, claims: string = vigilUidClaims()): Promise<number> {
  return db.transaction().execute(async (tx) => {
    const have = await tx.selectFrom("jail_uids").select("uid").where("vm_id", "=", vmId).executeTakeFirst();
    if (have) {
      confirmUid(claims, have.uid, vmId);
      return have.uid;
    }
    const counter = await tx.selectFrom("jail_uid_counter").select("next").where("id", "=", 1).executeTakeFirst();
    const next = counter?.next ?? VM_UID_BASE;
    if (next < VM_UID_BASE || next >= VM_UID_BASE + VM_UID_COUNT) {
      throw new VigilError("VIGIL_HOST", `Cannot allocate a uid for the jail of VM ${vmId}: all ${VM_UID_COUNT} uids from ${VM_UID_BASE} have been used`);
    }
    // The first uid at or above this inventory's counter that no daemon on this machine has claimed.
    const uid = claimUid(claims, next, vmId);
    if (counter) await tx.updateTable("jail_uid_counter").set({ next: uid + 1 }).where("id", "=", 1).execute();
    else await tx.insertInto("jail_uid_counter").values({ id: 1, next: uid + 1 }).execute();
    await tx.insertInto("jail_uids").values({ vm_id: vmId, uid }).execute();
    return uid;
  });
}
