import { test } from "node:test";
import assert from "node:assert/strict";
import { openSqlite } from "../inventory/db.ts";
import { VM_UID_BASE, VM_UID_COUNT } from "../host/vm-uid-range.ts";
import type { Db } from "../inventory/db.ts";
import { jailUidOf } from "./jail-uids.ts";

const recordedUid = async (db: Db, vmId: string) => (await db.selectFrom("jail_uids").select("uid").where("vm_id", "=", vmId).executeTakeFirst())?.uid;

test("jail uids: one per VM, stable, monotonic, never reused", async () => {
  const db = await openSqlite(":memory:");
  assert.equal(await recordedUid(db, "a"), undefined);
  const a = await jailUidOf(db, "a");
  const b = await jailUidOf(db, "b");
  assert.equal(a, VM_UID_BASE);
  assert.equal(b, VM_UID_BASE + 1);
  assert.equal(await jailUidOf(db, "a"), a, "a VM keeps its uid");
  // VM a is destroyed (its row goes); its uid is not handed out again.
  await db.deleteFrom("jail_uids").where("vm_id", "=", "a").execute();
  assert.equal(await jailUidOf(db, "c"), VM_UID_BASE + 2);
  await db.destroy();
});

test("jail uids: an exhausted range is an error, not a uid outside it", async () => {
  const db = await openSqlite(":memory:");
  await jailUidOf(db, "first");
  await db.updateTable("jail_uid_counter").set({ next: VM_UID_BASE + VM_UID_COUNT }).execute();
  await assert.rejects(jailUidOf(db, "late"), /have been used/);
  assert.equal(await recordedUid(db, "late"), undefined);
  await db.destroy();
});
