import { test } from "node:test";
import assert from "node:assert/strict";
import { openSqlite } from "../inventory/db.ts";
import { VM_UID_BASE, VM_UID_COUNT } from "../host/vm-uid-range.ts";
import type { Db } from "../inventory/db.ts";
import { jailUidOf as allocate } from "./jail-uids.ts";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after } from "node:test";

const dirs: string[] = [];
after(() => dirs.forEach((d) => rmSync(d, { recursive: true, force: true })));
/** A machine-wide claims directory of the test's own (a real daemon's is /var/lib/vigil-uids). */
const newClaims = () => {
  const d = mkdtempSync(join(tmpdir(), "vt-uids-"));
  dirs.push(d);
  return join(d, "claims");
};
let claims = newClaims();
const jailUidOf = (db: Db, vmId: string) => allocate(db, vmId, claims);

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

test("jail uids: two inventories on one machine never give two VMs the same uid, even allocating at once", async () => {
  claims = newClaims();
  const one = await openSqlite(":memory:");
  const two = await openSqlite(":memory:");
  const uids = await Promise.all(Array.from({ length: 40 }, (_, i) => jailUidOf(i % 2 ? one : two, `vm-${i}`)));
  assert.equal(new Set(uids).size, 40, "40 VMs, 40 uids");
  assert.ok(uids.every((u) => u >= VM_UID_BASE && u < VM_UID_BASE + 40));
  assert.equal(readFileSync(join(claims, String(uids[7])), "utf8"), "vm-7\n", "the claim names its VM");
  await one.destroy();
  await two.destroy();
});

test("jail uids: a uid recorded before claims is claimed on its next use; one another VM claimed is refused", async () => {
  claims = newClaims();
  const old = await openSqlite(":memory:");
  await old.insertInto("jail_uids").values({ vm_id: "legacy", uid: VM_UID_BASE + 5 }).execute();
  assert.equal(await jailUidOf(old, "legacy"), VM_UID_BASE + 5);
  assert.equal(readFileSync(join(claims, String(VM_UID_BASE + 5)), "utf8"), "legacy\n");
  const other = await openSqlite(":memory:");
  await other.insertInto("jail_uids").values({ vm_id: "clash", uid: VM_UID_BASE + 5 }).execute();
  await assert.rejects(jailUidOf(other, "clash"), /claimed on this machine by VM "legacy"/);
  // A new VM in either inventory skips the claimed uid.
  assert.notEqual(await jailUidOf(other, "fresh"), VM_UID_BASE + 5);
  await old.destroy();
  await other.destroy();
});
