/**
 * Witnesses: heads are published batched (at most one per interval, one more at shutdown); the HTTP witness
 * co-signs only heads that extend the last one it accepted, so a key holder's rewrite gets no co-signature.
 */
import { test, type TestContext } from "node:test";
import assert from "node:assert/strict";
import { createPublicKey, verify } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { openSqlite, type Db } from "../inventory/db.ts";
import { AuditLog } from "./audit-log.ts";
import { loadOrCreateSiteKey, type SiteKey } from "./site-key.ts";
import { FileWitness, HttpWitness, type Witness } from "./witness.ts";
import { cosignBytes, serveWitness, WitnessServer } from "./witness-server.ts";

async function openLog(t: TestContext, dir: string, key: SiteKey, name: string, witnesses: Witness[], publishIntervalMs: number): Promise<{ db: Db; log: AuditLog }> {
  const db = await openSqlite(join(dir, `${name}.db`));
  t.after(() => db.destroy());
  return { db, log: await AuditLog.open(db, key, "h", join(dir, `${name}-head.json`), { witnesses, publishIntervalMs }) };
}

const append = (log: AuditLog, i: number) => log.append({ actor: "a", action: "vm.start", target: { kind: "vm" }, result: "ok", details: { i } });
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

test("heads reach a file witness at least once a second while records are written, batched, plus once at shutdown", async (t) => {
  const dir = mkdtempSync(join(tmpdir(), "witness-"));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const path = join(dir, "witness.log");
  const { log } = await openLog(t, dir, loadOrCreateSiteKey(join(dir, "keys")), "a", [new FileWitness(path)], 1000);
  const startedAt = Date.now();
  let n = 0;
  while (Date.now() - startedAt < 2600) {
    await append(log, n++);
    await sleep(5);
  }
  const lines = () => readFileSync(path, "utf8").trim().split("\n");
  const during = lines().length;
  assert.ok(during >= 2 && during <= 4, `${during} publications in 2.6 s for ${n} records`);
  await log.close();
  const all = lines();
  assert.ok(all.length <= during + 1);
  assert.equal((JSON.parse(all.at(-1)!) as { size: number }).size, n, "the last publication is the newest head");
  // The sizes only grow.
  const sizes = all.map((l) => (JSON.parse(l) as { size: number }).size);
  assert.deepEqual([...sizes].sort((x, y) => x - y), sizes);
});

test("the HTTP witness co-signs heads that extend its last one and refuses a truncated or rewritten log", async (t) => {
  const dir = mkdtempSync(join(tmpdir(), "witness-"));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const key = loadOrCreateSiteKey(join(dir, "keys"));
  const { server, witness } = await serveWitness({ dir: join(dir, "witness"), siteKeyPath: join(dir, "keys", "site-ed25519.pub.pem"), host: "127.0.0.1", port: 0 });
  t.after(() => new Promise<void>((r) => server.close(() => r())));
  const addr = server.address() as { port: number };
  const url = `http://127.0.0.1:${addr.port}`;

  const http = new HttpWitness(url);
  const { log } = await openLog(t, dir, key, "a", [http], 50);
  for (let i = 0; i < 30; i++) await append(log, i);
  await sleep(120);
  for (let i = 30; i < 45; i++) await append(log, i);
  await log.close();
  const latest = await http.latest();
  assert.equal(latest?.size, 45);
  const cosigned = http.lastCosignature!;
  assert.equal(cosigned.witnessKeyId, witness.witnessKeyId);
  const witnessPub = loadOrCreateSiteKey(join(dir, "witness", "keys")).publicKey;
  assert.ok(verify(null, cosignBytes(latest), witnessPub, Buffer.from(cosigned.cosignature, "base64")), "the co-signature verifies with the witness key");

  // The same key, a different history (what a key holder rewriting the log produces): refused, not co-signed.
  const forged = new HttpWitness(url);
  const { log: other } = await openLog(t, dir, key, "b", [], 50);
  for (let i = 0; i < 50; i++) await other.append({ actor: "mallory", action: "vm.start", target: { kind: "vm" }, result: "ok", details: { i } });
  await assert.rejects(
    forged.publish(other.currentHead(), async (from) => (await other.consistencyProof(from)).path),
    /does not extend the witnessed tree of size 45: the log was truncated or rewritten/,
  );
  // A shorter log (truncated) is refused too.
  const { log: short } = await openLog(t, dir, key, "c", [], 50);
  for (let i = 0; i < 10; i++) await append(short, i);
  await assert.rejects(new HttpWitness(url).publish(short.currentHead(), async () => []), /older than the last witnessed head \(45\): the log was truncated/);
  assert.equal((await http.latest())?.size, 45);
});

test("threat model, root on the host: local evidence all rewritten, the off-host HTTP witness still shows the cut at start", async (t) => {
  const dir = mkdtempSync(join(tmpdir(), "witness-"));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const key = loadOrCreateSiteKey(join(dir, "keys"));
  const { server } = await serveWitness({ dir: join(dir, "elsewhere"), siteKeyPath: join(dir, "keys", "site-ed25519.pub.pem"), host: "127.0.0.1", port: 0 });
  t.after(() => new Promise<void>((r) => server.close(() => r())));
  const url = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
  const { log } = await openLog(t, dir, key, "site", [new HttpWitness(url)], 50);
  for (let i = 0; i < 40; i++) await append(log, i);
  await log.close();

  // Root replaces the whole local state with a shorter history signed by the site key: a fresh database, its
  // own head file, no tamper record anywhere on this host.
  const { log: rebuilt } = await openLog(t, dir, key, "rebuilt", [], 50);
  for (let i = 0; i < 25; i++) await append(rebuilt, i);
  assert.deepEqual((await rebuilt.health()).findings, [], "nothing local can tell");
  const { log: started } = await openLog(t, dir, key, "rebuilt", [new HttpWitness(url)], 50);
  assert.match((await started.health()).findings.join(), /the head witnessed by http:.* covers 40 records but the log ends at record 25: the log was truncated/);
});

test("a witness that cannot be reached at start is a warning, not a tamper finding", async (t) => {
  const dir = mkdtempSync(join(tmpdir(), "witness-"));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const key = loadOrCreateSiteKey(join(dir, "keys"));
  const { log } = await openLog(t, dir, key, "a", [], 50);
  for (let i = 0; i < 3; i++) await append(log, i);
  const { log: again } = await openLog(t, dir, key, "a", [new HttpWitness("http://127.0.0.1:9", 500)], 50);
  const h = await again.health();
  assert.deepEqual([h.ok, h.findings], [true, []]);
  assert.match(h.warnings.join(), /cannot read the latest head witnessed by http:http:\/\/127.0.0.1:9: fetch failed/);
});

test("the witness server refuses a malformed head, naming the field, before anything is kept", (t) => {
  const dir = mkdtempSync(join(tmpdir(), "witness-"));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  loadOrCreateSiteKey(join(dir, "keys"));
  const w = new WitnessServer(join(dir, "w"), createPublicKey(readFileSync(join(dir, "keys", "site-ed25519.pub.pem"))));
  const refused = (body: unknown) => w.submit(body) as { status: number; body: { error: { message: string } } };
  assert.deepEqual([refused(null).status, refused(null).body.error.message], [400, "head: the tree head has no valid size"]);
  assert.equal(refused({ head: "not a head" }).body.error.message, "head: the tree head has no valid size");
  assert.equal(refused({ head: { size: 3, rootHash: "ab".repeat(32) } }).body.error.message, "head: the tree head has no valid lastHash");
  assert.equal(refused({ head: { size: -1 } }).body.error.message, "head: the tree head has no valid size");
  assert.equal(w.current().status, 404, "nothing was witnessed");
});
