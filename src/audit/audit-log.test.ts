/**
 * Tamper evidence: the stored chain and the exported file must reveal a modified, deleted, inserted, reordered
 * or truncated record, naming the first bad one; an export must verify with the public key alone.
 */
import type { TestContext } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { sql } from "kysely";
import type { Db } from "../inventory/db.ts";
import type { Dialect } from "../inventory/dialect.ts";
import { dialectTest, testInventory } from "../inventory/testing/dialects.ts";
import { AuditLog, CHECKPOINT_EVERY } from "./audit-log.ts";
import { loadOrCreateSiteKey } from "./site-key.ts";

const VERIFIER = join(import.meta.dirname, "..", "..", "scripts", "verify-audit-export.mjs");

async function fixture(t: TestContext, dialect: Dialect, records = 12): Promise<{ db: Db; log: AuditLog; dir: string; reopen: () => Promise<AuditLog> }> {
  const dir = mkdtempSync(join(tmpdir(), "audit-test-"));
  const db = await testInventory(t, dialect, join(dir, "vigil.db"));
  const key = loadOrCreateSiteKey(join(dir, "keys"));
  const open = () => AuditLog.open(db, key, "host1", join(dir, "keys", "head.json"));
  const log = await open();
  for (let i = 0; i < records; i++) {
    await log.append({ actor: i % 2 ? "alice" : "bob", action: "vm.start", target: { kind: "vm", id: `id-${i}`, name: `vm${i}` }, result: "ok", details: { i } });
  }
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return { db, log, dir, reopen: open };
}

dialectTest("a clean log verifies", async (t, dialect) => {
  const { log } = await fixture(t, dialect);
  const r = await log.verify();
  assert.deepEqual({ ok: r.ok, records: r.records }, { ok: true, records: 12 });
});

dialectTest("a modified record is named", async (t, dialect) => {
  const { db, log } = await fixture(t, dialect);
  await db.updateTable("audit_log").set({ actor: "mallory" }).where("seq", "=", 5).execute();
  const r = await log.verify();
  assert.equal(r.ok, false);
  assert.equal(r.firstBad?.seq, 5);
  assert.match(r.firstBad!.reason, /modified/);
});

dialectTest("a deleted record is named", async (t, dialect) => {
  const { db, log } = await fixture(t, dialect);
  await db.deleteFrom("audit_log").where("seq", "=", 7).execute();
  const r = await log.verify();
  assert.equal(r.firstBad?.seq, 7);
  assert.match(r.firstBad!.reason, /missing.*deleted/);
});

dialectTest("an inserted record is caught where it was put", async (t, dialect) => {
  const { db, log } = await fixture(t, dialect);
  // Make room at seq 4 by moving 4.. up by one, then forge a record 4 with a made-up hash.
  await sql`UPDATE audit_log SET seq = seq + 1000 WHERE seq >= 4`.execute(db);
  await sql`UPDATE audit_log SET seq = seq - 999 WHERE seq >= 1000`.execute(db);
  const row = await db.selectFrom("audit_log").selectAll().where("seq", "=", 3).executeTakeFirstOrThrow();
  await db.insertInto("audit_log").values({ ...row, seq: 4, id: "forged", actor: "mallory" }).execute();
  const r = await log.verify();
  assert.equal(r.ok, false);
  assert.equal(r.firstBad?.seq, 4);
});

dialectTest("swapping two records is caught", async (t, dialect) => {
  const { db, log } = await fixture(t, dialect);
  await sql`UPDATE audit_log SET seq = -1 WHERE seq = 3`.execute(db);
  await sql`UPDATE audit_log SET seq = 3 WHERE seq = 6`.execute(db);
  await sql`UPDATE audit_log SET seq = 6 WHERE seq = -1`.execute(db);
  const r = await log.verify();
  assert.equal(r.firstBad?.seq, 3);
});

dialectTest("a truncated tail is caught by the signed head", async (t, dialect) => {
  const { db, log } = await fixture(t, dialect);
  await db.deleteFrom("audit_log").where("seq", ">", 9).execute();
  const r = await log.verify();
  assert.equal(r.ok, false);
  assert.equal(r.firstBad?.seq, 10);
  assert.match(r.firstBad!.reason, /truncated/);
});

dialectTest("a truncated tail is caught by a signed checkpoint even without the head file", async (t, dialect) => {
  const { db, dir, reopen } = await fixture(t, dialect, CHECKPOINT_EVERY + 5);
  rmSync(join(dir, "keys", "head.json"));
  await db.deleteFrom("audit_log").where("seq", ">", CHECKPOINT_EVERY - 3).execute();
  const r = await (await reopen()).verify();
  assert.equal(r.ok, false);
  assert.match(r.firstBad!.reason, /truncated/);
});

dialectTest("the export verifies with the public key alone; tampered exports do not", async (t, dialect) => {
  const { log, dir } = await fixture(t, dialect, CHECKPOINT_EVERY + 3);
  const lines: string[] = [];
  for await (const l of log.exportLines()) lines.push(l);
  const file = join(dir, "export.jsonl");
  const pub = join(dir, "keys", "site-ed25519.pub.pem");
  const run = (text: string) => {
    writeFileSync(file, text);
    return spawnSync(process.execPath, [VERIFIER, file, pub], { encoding: "utf8" });
  };
  const ok = run(lines.join("\n") + "\n");
  assert.equal(ok.status, 0, ok.stdout + ok.stderr);
  assert.match(ok.stdout, new RegExp(`OK: ${CHECKPOINT_EVERY + 3} records, 1 checkpoints`));

  const modified = lines.map((l, i) => (i === 5 ? l.replace('"actor":"bob"', '"actor":"eve"').replace('"actor":"alice"', '"actor":"eve"') : l));
  assert.match(run(modified.join("\n")).stdout, /BAD at line 6: record 5 was modified/);
  const deleted = lines.filter((_, i) => i !== 5);
  assert.match(run(deleted.join("\n")).stdout, /BAD at line 6: record 6 where 5 was expected/);
  const truncated = lines.slice(0, 40);
  assert.match(run(truncated.join("\n")).stdout, /no signed head: the export is truncated/);
  const reordered = [...lines];
  [reordered[3], reordered[4]] = [reordered[4]!, reordered[3]!];
  assert.equal(run(reordered.join("\n")).status, 1);

  // Another key cannot vouch for this log.
  loadOrCreateSiteKey(join(dir, "other-keys"));
  writeFileSync(file, lines.join("\n"));
  const foreign = spawnSync(process.execPath, [VERIFIER, file, join(dir, "other-keys", "site-ed25519.pub.pem")], { encoding: "utf8" });
  assert.equal(foreign.status, 1);
  assert.match(foreign.stdout, /exported by key .* but the key given is/);
});

dialectTest("listing by many target ids (more than SQLite's variable limit) pages through exactly those targets", async (t, dialect) => {
  const { log } = await fixture(t, dialect);
  const ids = [...Array.from({ length: 40_000 }, (_, i) => `none-${i}`), "id-3", "id-8"];
  const got = await log.list({ targetIds: ids, limit: 10 });
  assert.deepEqual(got.map((r) => r.target.id), ["id-3", "id-8"]);
  assert.deepEqual((await log.list({ targetIds: ids, afterSeq: got[0]!.seq })).map((r) => r.target.id), ["id-8"]);
  assert.deepEqual((await log.list({ targetIds: ids, tail: true, limit: 1 })).map((r) => r.target.id), ["id-8"]);
});
