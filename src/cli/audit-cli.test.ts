/**
 * The audit commands a third party relies on: `audit prove` / `check-proof` (the public key alone), `audit
 * verify --since` (a consistency proof checked by the CLI, not the daemon), and `vigil host` showing audit health.
 */
import { test, type TestContext } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createPrivateKey, sign } from "node:crypto";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startDaemon, type Daemon } from "../daemon/daemon.ts";
import { treeHeadBytes } from "../audit/chain.ts";
import { silentLogger } from "../log.ts";

const SRC = join(import.meta.dirname, "..");
const ENTRY = `import { main } from ${JSON.stringify(join(SRC, "cli", "main.ts"))};
await main([process.argv[0], "vigil", ...process.argv.slice(1)], { loadDaemon: () => import(${JSON.stringify(join(SRC, "daemon", "daemon.ts"))}) });`;

interface Run {
  status: number | null;
  stdout: string;
  stderr: string;
}

/** Runs the CLI from source; `shell` pipes its stdout into a shell command (e.g. `head -1`). */
function cli(env: NodeJS.ProcessEnv, args: string[], options: { timeoutMs?: number } = {}): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ["--import", "tsx", "--input-type=module", "-e", ENTRY, ...args], { env: { ...process.env, VIGIL_LOG_LEVEL: "silent", ...env }, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`vigil ${args.join(" ")} did not exit within ${options.timeoutMs ?? 20_000} ms; stderr: ${stderr}`));
    }, options.timeoutMs ?? 20_000);
    child.on("close", (status) => {
      clearTimeout(timer);
      resolve({ status, stdout, stderr });
    });
  });
}

function tempHome(t: TestContext): string {
  const home = mkdtempSync(join(tmpdir(), "vigil-cli-"));
  t.after(() => rmSync(home, { recursive: true, force: true }));
  return home;
}

/** A daemon in this process on a fresh home; the CLI reaches it through VIGIL_HOME's socket. */
async function daemon(t: TestContext): Promise<{ d: Daemon; env: NodeJS.ProcessEnv }> {
  const home = tempHome(t);
  const d = await startDaemon({ home, cache: join(home, "no-cache"), listen: "none", log: silentLogger() });
  t.after(() => d.close());
  return { d, env: { VIGIL_HOME: home, VIGIL_URL: "" } };
}

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
