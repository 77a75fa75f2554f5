/**
 * The Guard's recording (review findings 11 and 17): refusals raised inside an operation are `denied`;
 * destructive operations are audited before they run, and do not run when that record cannot be written.
 */
import { test, type TestContext } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { sql } from "kysely";
import { openSqlite, type Db } from "../inventory/db.ts";
import { AuditLog } from "../audit/audit-log.ts";
import { loadOrCreateSiteKey } from "../audit/site-key.ts";
import { VigilError } from "../errors.ts";
import { Guard, type RequestContext } from "./guard.ts";

const admin: RequestContext = { actor: { userId: "u1", name: "root", roles: ["admin"], introspect: false, groups: [], via: "unix" }, requestId: "r1" };

async function fixture(t: TestContext): Promise<{ db: Db; audit: AuditLog; guard: Guard }> {
  const dir = mkdtempSync(join(tmpdir(), "guard-test-"));
  const db = await openSqlite(join(dir, "vigil.db"));
  const audit = await AuditLog.open(db, loadOrCreateSiteKey(join(dir, "keys")), "h", join(dir, "keys", "head.json"));
  t.after(async () => {
    await db.destroy();
    rmSync(dir, { recursive: true, force: true });
  });
  return { db, audit, guard: new Guard(audit) };
}

test("a VIGIL_FORBIDDEN raised inside guard.run is recorded as denied, not error", async (t) => {
  const { audit, guard } = await fixture(t);
  const refuse = () => Promise.reject(new VigilError("VIGIL_FORBIDDEN", "you may only create VMs for yourself"));
  await assert.rejects(guard.run(admin, { action: "vm.clone", permission: "vm.create", target: { kind: "vm", name: "x" } }, refuse), /only create VMs/);
  const [last] = await audit.list({ tail: true, limit: 1 });
  assert.equal(last?.action, "vm.clone");
  assert.equal(last?.result, "denied");
  // Other failures stay errors.
  await assert.rejects(guard.run(admin, { action: "vm.start", permission: "vm.control", target: { kind: "vm" } }, () => Promise.reject(new VigilError("VIGIL_CONFLICT", "busy"))));
  assert.equal((await audit.list({ tail: true, limit: 1 }))[0]?.result, "error");
});

test("a destructive operation is recorded as an intent before it runs, its outcome linked to it", async (t) => {
  const { audit, guard } = await fixture(t);
  let seenWhileRunning: string | undefined;
  await guard.run(admin, { action: "vm.destroy", permission: "vm.delete", target: { kind: "vm", id: "v1", name: "web" } }, async () => {
    const [last] = await audit.list({ tail: true, limit: 1 });
    seenWhileRunning = `${last?.action} ${last?.result}`;
    return 1;
  });
  assert.equal(seenWhileRunning, "vm.destroy intent");
  const [intent, outcome] = await audit.list({ tail: true, limit: 2 });
  assert.deepEqual([intent?.action, intent?.result], ["vm.destroy", "intent"]);
  assert.deepEqual([outcome?.action, outcome?.result, outcome?.details.intentSeq], ["vm.destroy", "ok", intent?.seq]);
  // A non-destructive operation has no intent record.
  await guard.run(admin, { action: "vm.start", permission: "vm.control", target: { kind: "vm" } }, async () => 1);
  assert.equal((await audit.list({ tail: true, limit: 2 }))[0]?.action, "vm.destroy");
});

test("when the intent cannot be recorded, the destructive operation does not run (fail closed)", async (t) => {
  const { db, guard } = await fixture(t);
  await sql`DROP TABLE audit_log`.execute(db); // every append now fails, as on a full or broken disk
  for (const action of ["vm.destroy", "vm.purge", "vm.chown", "snapshot.revert"]) {
    let ran = false;
    await assert.rejects(
      guard.run(admin, { action, permission: "vm.delete", target: { kind: "vm" } }, async () => {
        ran = true;
      }),
    );
    assert.equal(ran, false, `${action} ran although nothing could be audited`);
  }
});

test("a read is recorded only when refused, also when the refusal comes from inside the operation", async (t) => {
  const { audit, guard } = await fixture(t);
  const read = { action: "vm.show", permission: "vm.read" as const, target: { kind: "vm", name: "web" }, readOnly: true };
  assert.equal(await guard.run(admin, read, async () => 7), 7);
  assert.equal((await audit.list()).length, 0, "an allowed read leaves no record");
  await assert.rejects(guard.run(admin, read, () => Promise.reject(new VigilError("VIGIL_FORBIDDEN", "not yours"))), /not yours/);
  await assert.rejects(guard.run(admin, read, () => Promise.reject(new VigilError("VIGIL_NOT_FOUND", "gone"))), /gone/);
  const records = await audit.list();
  assert.deepEqual(records.map((r) => [r.action, r.result, (r.details.error as { code: string }).code]), [["vm.show", "denied", "VIGIL_FORBIDDEN"]]);
});
