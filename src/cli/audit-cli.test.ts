/**
 * The audit commands a third party relies on: `audit prove` / `check-proof` (the public key alone), `audit
 * verify --since` (a consistency proof checked by the CLI, not the daemon), and `vigil host` showing audit health.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { copyFileSync, readFileSync, writeFileSync } from "node:fs";
import { createPrivateKey, sign } from "node:crypto";
import { join } from "node:path";
import { treeHeadBytes } from "../audit/chain.ts";
import { cli, daemon } from "./testing/cli-run.ts";

test("audit prove → check-proof with the public key; verify --since an old head passes, a forged one exits 4; host shows audit ok", async (t) => {
  const { d, env } = await daemon(t);
  const home = env.VIGIL_HOME!;
  const keys = join(home, "keys");
  for (let i = 0; i < 6; i++) await d.deps.audit.append({ actor: "alice", action: "vm.start", target: { kind: "vm" }, result: "ok" });
  copyFileSync(join(keys, "audit-head.json"), join(home, "old-head.json"));
  for (let i = 0; i < 9; i++) await d.deps.audit.append({ actor: "bob", action: "vm.stop", target: { kind: "vm" }, result: "ok" });

  const prove = await cli(env, ["audit", "prove", "4", "-o", join(home, "p.json")]);
  assert.equal(prove.status, 0, prove.stderr);
  assert.match(prove.stdout, /record 4 \(vm.start by alice\) is leaf 3 of \d+; audit path of \d+ hashes/);
  const check = await cli(env, ["audit", "check-proof", join(home, "p.json"), "--key", join(keys, "site-ed25519.pub.pem")]);
  assert.equal(check.status, 0, check.stderr + check.stdout);
  assert.match(check.stdout, /^OK: record 4 \(vm.start by alice\) is in the tree of size/);
  const p = JSON.parse(readFileSync(join(home, "p.json"), "utf8")) as { record: { actor: string } };
  p.record.actor = "mallory";
  writeFileSync(join(home, "bad.json"), JSON.stringify(p));
  assert.equal((await cli(env, ["audit", "check-proof", join(home, "bad.json"), "--key", join(keys, "site-ed25519.pub.pem")])).status, 4);

  const since = await cli(env, ["audit", "verify", "--since", join(home, "old-head.json")]);
  assert.equal(since.status, 0, since.stderr + since.stdout);
  assert.match(since.stdout, /OK: the log \(\d+ records\) extends the old head of 7 records .*consistency proof checked/);

  // A head for a different history (what the log looked like before a rewrite), signed by the site key.
  const forged = { size: 5, rootHash: "ab".repeat(32), lastHash: "cd".repeat(32), time: new Date().toISOString(), keyId: d.deps.audit.keyId };
  const signature = sign(null, treeHeadBytes(forged), createPrivateKey(readFileSync(join(keys, "site-ed25519.pem")))).toString("base64");
  writeFileSync(join(home, "forged-head.json"), JSON.stringify({ type: "vigil-audit-tree-head", ...forged, signature }));
  const bad = await cli(env, ["audit", "verify", "--since", join(home, "forged-head.json")]);
  assert.equal(bad.status, 4, bad.stderr + bad.stdout);
  assert.match(bad.stdout, /TAMPERED: the tree of \d+ records does NOT extend the old head of 5 records/);

  const host = await cli(env, ["host"]);
  assert.equal(host.status, 0, host.stderr);
  assert.match(host.stdout, /^audit +ok \(\d+ records, root [0-9a-f]{16}…\)$/m);
});
