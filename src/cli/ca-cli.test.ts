/**
 * `vigil ca init` / `vigil ca show` as an operator meets them: local, no daemon, on $VIGIL_HOME/keys/ca.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { statSync } from "node:fs";
import { join } from "node:path";
import { cli, tempHome } from "./testing/cli-run.ts";

test("ca init makes the CA in VIGIL_HOME/keys/ca; a second init exits 4 unless --force; ca show reads it", async (t) => {
  const home = tempHome(t);
  const env = { VIGIL_HOME: home, VIGIL_URL: "" };
  const dir = join(home, "keys", "ca");

  const missing = await cli(env, ["ca", "show"]);
  assert.equal(missing.status, 3, missing.stderr);
  assert.match(missing.stderr, /^vigil: There is no vigil CA in .*vigil ca init/);

  const init = await cli(env, ["ca", "init"]);
  assert.equal(init.status, 0, init.stderr);
  assert.match(init.stdout, new RegExp(`^Made the vigil CA in ${dir}\\n`));
  assert.equal(statSync(join(home, "keys")).mode & 0o777, 0o700);
  assert.equal(statSync(dir).mode & 0o777, 0o700);
  assert.equal(statSync(join(dir, "ca-key.pem")).mode & 0o777, 0o600);

  const show = await cli(env, ["ca", "show", "--json"]);
  assert.equal(show.status, 0, show.stderr);
  const view = JSON.parse(show.stdout) as { dir: string; ca: { subject: string; fingerprint: string; notAfter: string }; manager: { subject: string } };
  assert.equal(view.dir, dir);
  assert.equal(view.ca.subject, "O=vigil, OU=ca, CN=vigil CA");
  assert.equal(view.manager.subject, "O=vigil, OU=manager, CN=manager");
  // The fingerprint openssl computes from the file on disk.
  const openssl = execFileSync("openssl", ["x509", "-in", join(dir, "ca-cert.pem"), "-noout", "-fingerprint", "-sha256"], { encoding: "utf8" });
  assert.equal(openssl.trim().split("=")[1], view.ca.fingerprint);
  assert.ok(Date.parse(view.ca.notAfter) > Date.now() + 9.9 * 365 * 86_400_000);
  const text = await cli(env, ["ca", "show"]);
  assert.match(text.stdout, new RegExp(`fingerprint +${view.ca.fingerprint}`));

  const again = await cli(env, ["ca", "init"]);
  assert.equal(again.status, 4, again.stderr);
  assert.match(again.stderr, /^vigil: Cannot make the vigil CA in .*: one is already there .*give --force/);
  assert.equal(again.stderr.trim().split("\n").length, 1);

  const forced = await cli(env, ["ca", "init", "--force", "--json"]);
  assert.equal(forced.status, 0, forced.stderr);
  assert.notEqual((JSON.parse(forced.stdout) as { ca: { fingerprint: string } }).ca.fingerprint, view.ca.fingerprint);
});
