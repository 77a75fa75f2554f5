/**
 * An audit log that cannot be cut short (review finding 2, issue 10 §3): what the check at open finds, that it
 * records `audit.tamper` after the surviving records instead of re-signing, and proofs a third party checks with
 * the public key alone. One test per row of the threat model in docs/audit.md is marked "threat model".
 */
import type { TestContext } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Db } from "../inventory/db.ts";
import type { Dialect } from "../inventory/dialect.ts";
import { dialectTest, testInventory } from "../inventory/testing/dialects.ts";
import { AuditLog, CHECKPOINT_EVERY } from "./audit-log.ts";
import { GENESIS_HASH, leafData, recordHash, statementBytes, treeHeadBytes, type AuditRecord } from "./chain.ts";
import { Frontier, leafHash, verifyConsistency, verifyInclusion } from "./merkle.ts";
import { loadOrCreateSiteKey, type SiteKey } from "./site-key.ts";
import { FileWitness } from "./witness.ts";

const VERIFIER = join(import.meta.dirname, "..", "..", "scripts", "verify-audit-export.mjs");

interface Fixture {
  db: Db;
  dir: string;
  key: SiteKey;
  headPath: string;
  open: (witnessPath?: string) => Promise<AuditLog>;
  fill: (log: AuditLog, n: number) => Promise<void>;
}

async function fixture(t: TestContext, dialect: Dialect): Promise<Fixture> {
  const dir = mkdtempSync(join(tmpdir(), "audit-tamper-"));
  const db = await testInventory(t, dialect, join(dir, "vigil.db"));
  const key = loadOrCreateSiteKey(join(dir, "keys"));
  const headPath = join(dir, "keys", "audit-head.json");
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return {
    db,
    dir,
    key,
    headPath,
    open: (witnessPath) => AuditLog.open(db, key, "host1", headPath, witnessPath ? { witnesses: [new FileWitness(witnessPath)], publishIntervalMs: 1000 } : {}),
    fill: async (log, n) => {
      for (let i = 0; i < n; i++) await log.append({ actor: "alice", action: "vm.start", target: { kind: "vm", id: `id-${i}`, name: `vm${i}` }, result: "ok", details: { i } });
    },
  };
}

async function exportTo(log: AuditLog, file: string): Promise<void> {
  const lines: string[] = [];
  for await (const l of log.exportLines()) lines.push(l);
  writeFileSync(file, lines.join("\n") + "\n");
}

const verifier = (...args: string[]) => spawnSync(process.execPath, [VERIFIER, ...args], { encoding: "utf8" });

/** What someone with write access to vigil.db (and no key) does: cut the tail, checkpoints included. */
async function truncate(db: Db, after: number): Promise<void> {
  await db.deleteFrom("audit_log").where("seq", ">", after).execute();
  await db.deleteFrom("audit_checkpoints").where("seq", ">", after).execute();
}

dialectTest("threat model, DB write: a truncated log is a tamper finding at the next start, recorded after the survivors, never re-signed", async (t, dialect) => {
  const f = await fixture(t, dialect);
  const log = await f.open();
  await f.fill(log, 30);
  await log.close();
  const before = readFileSync(f.headPath, "utf8");
  await truncate(f.db, 20);

  const reopened = await f.open();
  const health = await reopened.health();
  assert.equal(health.ok, false);
  assert.match(health.findings.join("\n"), /covers 30 records but the log ends at record 20: the log was truncated/);
  // The finding is record 21, after the surviving records; the head that disagreed is kept as evidence.
  const [last] = await reopened.list({ tail: true, limit: 1 });
  assert.equal(last?.seq, 21);
  assert.equal(last?.action, "audit.tamper");
  const kept = readdirSync(join(f.dir, "keys")).filter((n) => n.startsWith("audit-head.json.tampered-"));
  assert.equal(kept.length, 1);
  assert.equal(readFileSync(join(f.dir, "keys", kept[0]!), "utf8"), before);
  const r = await reopened.verify();
  assert.equal(r.ok, false);
  assert.match(r.firstBad!.reason, /tamper finding was recorded at record 21/);
  // And it stays a finding after further restarts.
  await reopened.close();
  const again = await f.open();
  assert.equal((await again.verify()).ok, false);
  assert.equal((await again.health()).ok, false);
});

dialectTest("a missing head file on a non-empty log is a finding; a fresh log without one is not", async (t, dialect) => {
  const f = await fixture(t, dialect);
  const fresh = await f.open();
  assert.deepEqual((await fresh.health()).findings, []);
  await f.fill(fresh, 5);
  rmSync(f.headPath);
  const reopened = await f.open();
  assert.match((await reopened.health()).findings.join(), /signed head file is missing while the log holds 5 records/);
});

dialectTest("threat model, DB write: a record rewritten with the whole chain recomputed is caught by the head's Merkle root", async (t, dialect) => {
  const f = await fixture(t, dialect);
  const log = await f.open();
  await f.fill(log, 12);
  // Rewrite record 5 and recompute every hash after it: the chain is internally consistent again.
  const rows = await f.db.selectFrom("audit_log").selectAll().orderBy("seq").execute();
  let prev = GENESIS_HASH;
  for (const row of rows) {
    const body: AuditRecord = { seq: row.seq, id: row.id, time: row.time, actor: row.seq === 5 ? "mallory" : row.actor, action: row.action, target: { kind: row.target_kind, id: row.target_id, name: row.target_name }, result: row.result as AuditRecord["result"], host: row.host, requestId: row.request_id, details: JSON.parse(row.details) as Record<string, unknown>, prevHash: prev };
    prev = recordHash(body);
    await f.db.updateTable("audit_log").set({ actor: body.actor, prev_hash: body.prevHash, hash: prev }).where("seq", "=", row.seq).execute();
  }
  const reopened = await f.open();
  assert.match((await reopened.health()).findings.join(), /record 12 does not match the signed head file: the log was rewritten/);
});

dialectTest("deleted checkpoints are a finding even when the records are intact", async (t, dialect) => {
  const f = await fixture(t, dialect);
  const log = await f.open();
  await f.fill(log, CHECKPOINT_EVERY * 2 + 3);
  await f.db.deleteFrom("audit_checkpoints").where("seq", "=", CHECKPOINT_EVERY).execute();
  const r = await log.verify();
  assert.equal(r.ok, false);
  assert.match(r.firstBad!.reason, new RegExp(`checkpoint at record ${CHECKPOINT_EVERY} is missing`));
  const reopened = await f.open();
  assert.match((await reopened.health()).findings.join(), /1 of the 2 signed checkpoints are missing/);
});

dialectTest("an existing pre-Merkle log is upgraded at open: the tree is built, its legacy head still checked", async (t, dialect) => {
  const f = await fixture(t, dialect);
  const log = await f.open();
  await f.fill(log, 37);
  const root = log.currentHead().rootHash;
  // What a database written before 0003-audit-merkle looks like: no tree, a legacy head file and checkpoint.
  await f.db.deleteFrom("audit_tree").execute();
  await f.db.deleteFrom("audit_checkpoints").execute();
  const last = await f.db.selectFrom("audit_log").selectAll().where("seq", "=", 37).executeTakeFirstOrThrow();
  const legacy = { seq: 37, hash: last.hash, time: new Date().toISOString(), keyId: f.key.keyId };
  writeFileSync(f.headPath, JSON.stringify({ ...legacy, signature: f.key.sign(statementBytes("head", legacy)) }));
  const upgraded = await f.open();
  assert.deepEqual((await upgraded.health()).findings, []);
  assert.equal(upgraded.currentHead().rootHash, root);
  assert.equal((await upgraded.verify()).ok, true, "the legacy head file verifies until the next append replaces it");
  await upgraded.append({ actor: "system", action: "daemon.start", target: { kind: "host" }, result: "ok" });
  assert.equal((await upgraded.verify()).ok, true);
  // The legacy head covering more than the log is still a truncation.
  const cut = { ...legacy, seq: 99 };
  writeFileSync(f.headPath, JSON.stringify({ ...cut, signature: f.key.sign(statementBytes("head", cut)) }));
  assert.match((await (await f.open()).health()).findings.join(), /covers 99 records but the log ends at record 38/);
});

dialectTest("inclusion proofs verify with the public key alone (library and standalone verifier); a changed record does not", async (t, dialect) => {
  const f = await fixture(t, dialect);
  const log = await f.open();
  await f.fill(log, 21);
  const pub = join(f.dir, "keys", "site-ed25519.pub.pem");
  for (const seq of [1, 8, 13, 21]) {
    const p = await log.inclusionProof(seq);
    const { hash: _h, ...body } = p.record;
    assert.ok(verifyInclusion(leafHash(leafData(body)), p.leafIndex, p.treeSize, p.path.map((x) => Buffer.from(x, "hex")), Buffer.from(p.head.rootHash, "hex")));
    const file = join(f.dir, `proof-${seq}.json`);
    writeFileSync(file, JSON.stringify(p));
    const ok = verifier("--proof", file, pub);
    assert.equal(ok.status, 0, ok.stdout + ok.stderr);
    assert.match(ok.stdout, new RegExp(`OK: record ${seq} .* is in the tree of size 21`));
  }
  const p = await log.inclusionProof(8);
  // Changing the record and its hash together (so it self-verifies) still fails the audit path.
  const body = { ...p.record, actor: "mallory" } as Record<string, unknown>;
  delete body.hash;
  const forged = { ...p, record: { ...body, hash: recordHash(body as unknown as AuditRecord) } };
  writeFileSync(join(f.dir, "forged.json"), JSON.stringify(forged));
  const bad = verifier("--proof", join(f.dir, "forged.json"), pub);
  assert.equal(bad.status, 1);
  assert.match(bad.stdout, /record 8 is NOT in the tree of size 21/);
  await assert.rejects(log.inclusionProof(22), /No audit record 22/);
});

dialectTest("consistency: the current log extends an old head; after a truncation it does not (proof, export --since)", async (t, dialect) => {
  const f = await fixture(t, dialect);
  const log = await f.open();
  await f.fill(log, 13);
  const oldHead = readFileSync(f.headPath, "utf8");
  const old = log.currentHead();
  await f.fill(log, 9);
  const p = await log.consistencyProof(old.size);
  assert.ok(verifyConsistency(old.size, p.toSize, Buffer.from(old.rootHash, "hex"), Buffer.from(p.head.rootHash, "hex"), p.path.map((x) => Buffer.from(x, "hex"))));
  const pub = join(f.dir, "keys", "site-ed25519.pub.pem");
  writeFileSync(join(f.dir, "c.json"), JSON.stringify({ ...p, fromHead: old }));
  assert.equal(verifier("--proof", join(f.dir, "c.json"), pub).status, 0);

  writeFileSync(join(f.dir, "old-head.json"), oldHead);
  await exportTo(log, join(f.dir, "old.jsonl"));
  const ok = verifier(join(f.dir, "old.jsonl"), pub, "--since", join(f.dir, "old-head.json"));
  assert.equal(ok.status, 0, ok.stdout);
  assert.match(ok.stdout, /extends the old head of 13 records/);

  // Truncate to 10, restart (a tamper record is added), keep appending: the new export does not extend either.
  await log.close();
  await truncate(f.db, 10);
  const after = await f.open();
  await f.fill(after, 20);
  await exportTo(after, join(f.dir, "new.jsonl"));
  const sinceHead = verifier(join(f.dir, "new.jsonl"), pub, "--since", join(f.dir, "old-head.json"));
  assert.equal(sinceHead.status, 1);
  assert.match(sinceHead.stdout, /record 13 does not match the old head: the log was rewritten since then/);
  const sinceExport = verifier(join(f.dir, "new.jsonl"), pub, "--since", join(f.dir, "old.jsonl"));
  assert.equal(sinceExport.status, 1);
  assert.match(sinceExport.stdout, /record 22 does not match the old head/);
  // A log cut shorter than the old head: clearly "truncated".
  await after.close();
  await truncate(f.db, 5);
  await exportTo(await f.open(), join(f.dir, "short.jsonl"));
  assert.match(verifier(join(f.dir, "short.jsonl"), pub, "--since", join(f.dir, "old-head.json")).stdout, /BAD.*(truncated|does not match)/);
});

dialectTest("export keeps every checkpoint: one past the end (a cut tail) fails the standalone verifier", async (t, dialect) => {
  const f = await fixture(t, dialect);
  const log = await f.open();
  await f.fill(log, CHECKPOINT_EVERY + 5);
  await f.db.deleteFrom("audit_log").where("seq", ">", CHECKPOINT_EVERY - 10).execute();
  await f.db.deleteFrom("audit_tree").execute();
  const reopened = await f.open();
  await exportTo(reopened, join(f.dir, "e.jsonl"));
  const r = verifier(join(f.dir, "e.jsonl"), join(f.dir, "keys", "site-ed25519.pub.pem"));
  assert.equal(r.status, 1);
  assert.match(r.stdout, new RegExp(`checkpoint covers record ${CHECKPOINT_EVERY} but the log ends at record \\d+: truncated`));
});

dialectTest("threat model, DB write + key: a consistently re-signed rewrite is caught by the file witness at start", async (t, dialect) => {
  const f = await fixture(t, dialect);
  const witnessDir = join(f.dir, "other-mount");
  mkdirSync(witnessDir);
  const witness = join(witnessDir, "witness.log");
  const log = await f.open(witness);
  await f.fill(log, 40);
  await log.close();
  const witnessed = readFileSync(witness, "utf8").trim().split("\n");
  assert.ok(witnessed.length >= 1 && witnessed.length <= 3, `batched, not one line per record: ${witnessed.length}`);
  assert.equal((JSON.parse(witnessed.at(-1)!) as { size: number }).size, 40, "the shutdown publication carries the newest head");

  // With the key, the attacker cuts the log and signs a head file that agrees with what is left.
  await truncate(f.db, 25);
  await f.db.deleteFrom("audit_tree").where("idx", ">=", 0).execute();
  const rows = await f.db.selectFrom("audit_log").selectAll().orderBy("seq").execute();
  const frontier = new Frontier();
  for (const row of rows) frontier.push(leafHash(leafData(rowToBody(row))));
  const forged = { size: 25, rootHash: frontier.root().toString("hex"), lastHash: rows.at(-1)!.hash, time: new Date().toISOString(), keyId: f.key.keyId };
  writeFileSync(f.headPath, JSON.stringify({ type: "vigil-audit-tree-head", ...forged, signature: f.key.sign(treeHeadBytes(forged)) }));

  // Without a witness the forgery passes the start check; the witness on the other mount catches it.
  writeFileSync(join(f.dir, "copy-of-head.json"), readFileSync(f.headPath));
  assert.deepEqual((await (await AuditLog.open(f.db, f.key, "host1", join(f.dir, "copy-of-head.json"))).health()).findings, []);
  const started = await f.open(witness);
  assert.match((await started.health()).findings.join("\n"), /the head witnessed by file:.* covers 40 records but the log ends at record 25: the log was truncated/);
});

function rowToBody(row: { seq: number; id: string; time: string; actor: string; action: string; target_kind: string; target_id: string | null; target_name: string | null; result: string; host: string; request_id: string | null; details: string; prev_hash: string }): AuditRecord {
  return { seq: row.seq, id: row.id, time: row.time, actor: row.actor, action: row.action, target: { kind: row.target_kind, id: row.target_id, name: row.target_name }, result: row.result as AuditRecord["result"], host: row.host, requestId: row.request_id, details: JSON.parse(row.details) as Record<string, unknown>, prevHash: row.prev_hash };
}
