/**
 * The audit log through the real daemon: a truncation made while it was stopped is shown by GET /v1/host and
 * fails verify after the restart (review finding 2, F6b); unauthenticated requests cannot amplify into one
 * signed record each (finding 11).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startDaemon } from "../daemon/daemon.ts";
import { openSqlite } from "../inventory/db.ts";
import { silentLogger } from "../log.ts";

const start = (home: string) => startDaemon({ home, cache: join(home, "no-cache"), listen: "none", log: silentLogger() });
const unix = { transport: "unix" as const };

test("a log truncated while the daemon was stopped: `vigil host` shows it, verify fails, the tamper record follows the survivors", async (t) => {
  const home = mkdtempSync(join(tmpdir(), "vigil-audit-api-"));
  t.after(() => rmSync(home, { recursive: true, force: true }));
  let daemon = await start(home);
  for (let i = 0; i < 30; i++) await daemon.deps.audit.append({ actor: "alice", action: "vm.start", target: { kind: "vm" }, result: "ok" });
  const healthy = (await (await daemon.app.request("/v1/host", {}, unix)).json()) as { audit: { ok: boolean; findings: string[] } };
  assert.deepEqual([healthy.audit.ok, healthy.audit.findings], [true, []]);
  await daemon.close();

  const db = await openSqlite(join(home, "vigil.db"));
  await db.deleteFrom("audit_log").where("seq", ">", 20).execute();
  await db.deleteFrom("audit_checkpoints").where("seq", ">", 20).execute();
  await db.destroy();

  daemon = await start(home);
  t.after(() => daemon.close());
  const host = (await (await daemon.app.request("/v1/host", {}, unix)).json()) as { audit: { ok: boolean; findings: string[]; tamperRecords: Array<{ seq: number }> } };
  assert.equal(host.audit.ok, false);
  assert.match(host.audit.findings.join(), /the log was truncated/);
  assert.deepEqual(host.audit.tamperRecords.map((r) => r.seq), [21]);
  const verify = (await (await daemon.app.request("/v1/audit/verify", {}, unix)).json()) as { ok: boolean; firstBad: { reason: string } };
  assert.equal(verify.ok, false);
  assert.match(verify.firstBad.reason, /tamper finding/);
});

test("a flood of unauthenticated requests from one source costs one audit record per interval, with the count", async (t) => {
  const home = mkdtempSync(join(tmpdir(), "vigil-audit-api-"));
  const daemon = await start(home);
  t.after(async () => {
    await daemon.close();
    rmSync(home, { recursive: true, force: true });
  });
  const anonymous = async () => (await daemon.deps.audit.list({ tail: true, limit: 1000 })).filter((r) => r.actor === "anonymous");
  for (let i = 0; i < 50; i++) {
    const res = await daemon.app.request("/v1/vms", { method: "POST", body: "{}" }, { transport: "tcp", remoteAddress: "203.0.113.9" });
    assert.equal(res.status, 401);
  }
  await daemon.app.request("/v1/vms", { method: "DELETE" }, { transport: "tcp", remoteAddress: "198.51.100.7" });
  const now = await anonymous();
  assert.equal(now.length, 2, "one record per source, not one per request");
  assert.deepEqual(now.map((r) => [r.action, r.details.source, r.details.count]), [["auth.denied", "203.0.113.9", 1], ["auth.denied", "198.51.100.7", 1]]);
  // At the end of the interval (here: shutdown) the rest is one record with its count.
  await daemon.deps.audit.denials.flush(true);
  const after = await anonymous();
  assert.equal(after.length, 3);
  assert.deepEqual([after[2]!.details.source, after[2]!.details.count, after[2]!.details.aggregated], ["203.0.113.9", 49, true]);
});
