/**
 * The `vigil` command as a user meets it, without QEMU: the CLI runs from source in a subprocess against an
 * in-process daemon (or a fake server), and we check its one-line messages and documented exit codes.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import { generateKeyPairSync } from "node:crypto";
import { chmodSync, existsSync, mkdirSync, statSync, writeFileSync } from "node:fs";
import { createServer } from "node:http";
import { createServer as createNetServer, type AddressInfo } from "node:net";
import { join } from "node:path";
import { startDaemon } from "../daemon/daemon.ts";
import { silentLogger } from "../log.ts";
import { createVmRequestSchema, resolveSpec } from "../vm/spec.ts";

import { ENTRY, cli, daemon, tempHome, type Run } from "./testing/cli-run.ts";

function oneLine(r: Run): void {
  assert.doesNotMatch(r.stderr, /\n\s+at /, `a stack trace: ${r.stderr}`);
  assert.doesNotMatch(r.stderr, /internal error/i, r.stderr);
  assert.equal(r.stderr.trim().split("\n").length, 1, `more than one line: ${r.stderr}`);
}

test("serve: a bad --listen exits 2 before creating anything", async (t) => {
  const home = tempHome(t);
  const r = await cli({ VIGIL_HOME: join(home, "h") }, ["serve", "--listen", "garbage"]);
  assert.equal(r.status, 2, r.stderr);
  assert.match(r.stderr, /Invalid --listen "garbage"/);
  oneLine(r);
  assert.equal(existsSync(join(home, "h")), false, "nothing is created for a bad --listen");
});

test("serve: an address in use exits 8 and leaves no socket or pid file", async (t) => {
  const home = tempHome(t);
  const busy = createNetServer();
  await new Promise<void>((r) => busy.listen(0, "127.0.0.1", () => r()));
  t.after(() => busy.close());
  const port = (busy.address() as AddressInfo).port;
  const r = await cli({ VIGIL_HOME: home }, ["serve", "--listen", `127.0.0.1:${port}`]);
  assert.equal(r.status, 8, r.stderr);
  assert.match(r.stderr, /Cannot listen on 127\.0\.0\.1:\d+: .*EADDRINUSE/);
  assert.equal(existsSync(join(home, "run", "vigil.sock")), false, "socket left behind");
  assert.equal(existsSync(join(home, "run", "vigil.pid")), false, "pid file left behind");
});

test("-o to a directory that does not exist is refused before the request, naming -o and the path", async (t) => {
  const { env } = await daemon(t);
  for (const args of [
    ["vm", "export", "vm1", "-o", "/nonexist/dir/x.vigil"],
    ["audit", "export", "-o", "/nonexist/x.jsonl"],
  ]) {
    const r = await cli(env, args);
    assert.equal(r.status, 2, `${args.join(" ")}: ${r.stderr}`);
    assert.match(r.stderr, /Cannot write -o "\/nonexist\/.*": the directory "\/nonexist.*" does not exist/);
    oneLine(r);
  }
});

test("audit export -o writes the file", async (t) => {
  const { env } = await daemon(t);
  const out = join(tempHome(t), "audit.jsonl");
  const r = await cli(env, ["audit", "export", "-o", out]);
  assert.equal(r.status, 0, r.stderr);
  assert.ok(existsSync(out));
});

test("a reader that stops early (| head -1) ends the output quietly with exit 0", async (t) => {
  const { env } = await daemon(t);
  for (const args of [["audit", "tail", "-n", "1000"], ["audit", "export"]]) {
    const r = await new Promise<{ status: number | null; stderr: string }>((resolve) => {
      const child = spawn(process.execPath, ["--import", "tsx", "--input-type=module", "-e", ENTRY, ...args], { env: { ...process.env, VIGIL_LOG_LEVEL: "silent", ...env }, stdio: ["ignore", "pipe", "pipe"] });
      child.stdout.destroy(); // the reader is gone before the first line
      let stderr = "";
      child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
      child.on("close", (status) => resolve({ status, stderr }));
    });
    assert.equal(r.status, 0, `${args.join(" ")}: ${r.stderr}`);
    assert.equal(r.stderr, "");
  }
});

test("files that do not exist are usage errors naming the argument", async (t) => {
  const { env } = await daemon(t);
  const imp = await cli(env, ["vm", "import", "nonexist.vigil"]);
  assert.equal(imp.status, 2, imp.stderr);
  assert.match(imp.stderr, /Invalid <file> ".*nonexist\.vigil": the file does not exist/);
  oneLine(imp);
  const trust = await cli(env, ["trust", "add", "/nonexist.pem", "--name", "x"]);
  assert.equal(trust.status, 2, trust.stderr);
  assert.match(trust.stderr, /Invalid <pem-file> "\/nonexist\.pem": the file does not exist/);
  oneLine(trust);
});

test("--nic and --no-nic together are a usage error, in either order", async (t) => {
  const { env } = await daemon(t);
  for (const args of [["--no-nic", "--nic", "open"], ["--nic", "open", "--no-nic"]]) {
    const r = await cli(env, ["vm", "create", "x", ...args]);
    assert.equal(r.status, 2, `${args.join(" ")}: ${r.stderr}`);
    assert.match(r.stderr, /Use either --nic or --no-nic, not both/);
    oneLine(r);
  }
});

test("--label and vm floor --set refuse a pair without a key, naming the flag and the form, before any request", async (t) => {
  const { env } = await daemon(t);
  for (const [args, message] of [
    [["vm", "create", "x", "--label", "a=1", "--label", "=v"], 'Invalid --label "=v": use KEY=VALUE'],
    [["vm", "create", "x", "--label", "novalue"], 'Invalid --label "novalue": use KEY=VALUE'],
    [["vm", "floor", "nonexist", "--set", "patchLevel"], 'Invalid --set "patchLevel": use FACT=VALUE'],
  ] as const) {
    const r = await cli(env, [...args]);
    assert.equal(r.status, 2, `${args.join(" ")}: ${r.stderr}`);
    assert.equal(r.stderr, `vigil: ${message}\n`);
  }
});

test("VIGIL_URL must be http(s)://HOST:PORT", async () => {
  for (const url of ["foo", "127.0.0.1:7461", "ftp://x:1"]) {
    const r = await cli({ VIGIL_URL: url }, ["vm", "list"]);
    assert.equal(r.status, 2, `${url}: ${r.stderr}`);
    assert.match(r.stderr, /Invalid VIGIL_URL ".*": it must be http\(s\):\/\/HOST:PORT/);
    oneLine(r);
  }
});

test("a server at VIGIL_URL that is not vigil gets one line, not its HTML (exit 6)", async (t) => {
  const server = createServer((_req, res) => {
    res.writeHead(404, { "content-type": "text/html" });
    res.end("<!DOCTYPE html>\n<html><body><h1>Not Found</h1>\n<p>nginx</p></body></html>\n");
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
  t.after(() => server.close());
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const r = await cli({ VIGIL_URL: url }, ["vm", "list"]);
  assert.equal(r.status, 6, r.stderr);
  assert.match(r.stderr, /The server at http:\/\/127\.0\.0\.1:\d+\/ is not a vigil daemon \(HTTP 404\)/);
  assert.doesNotMatch(r.stderr, /html/i);
  oneLine(r);
});

test("vtime show prints the floor in its text output, one line per fact, or \"floor: none\"", async (t) => {
  const { d, env } = await daemon(t);
  const spec = resolveSpec(createVmRequestSchema.parse({ name: "v1", memoryMiB: 128 }), { name: "tiny", boot: { kind: "kernel", kernel: "/k", initrd: "/i", cmdline: "" }, disk: "/d" }, { cpu: "max" });
  const vm = await d.repo.insert({ id: crypto.randomUUID(), name: "v1", spec, state: "stopped", host: "h", vmgenid: crypto.randomUUID(), generation: 1, owner: "user:root", approver: null, purpose: null, expiresAt: null, labels: {}, lineage: { kind: "image", image: "tiny" }, isTemplate: false, createdBy: "root", createdAt: new Date().toISOString() });
  const none = await cli(env, ["vtime", "show", "v1"]);
  assert.equal(none.status, 0, none.stderr);
  assert.match(none.stdout, /^floor: none$/m);
  await d.repo.update(vm.id, { securityFloor: { kernel: "6.1.0-9", openssl: "3.0.11" } });
  const r = await cli(env, ["vtime", "show", "v1"]);
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /^floor: kernel 6\.1\.0-9$/m);
  assert.match(r.stdout, /^floor: openssl 3\.0\.11$/m);
  assert.doesNotMatch(r.stdout, /floor: none/);
});

/** The site's own entry in `trust list --json`. */
async function siteKey(env: NodeJS.ProcessEnv): Promise<{ keyId: string; site: boolean; addedAt: string }> {
  const list = await cli(env, ["trust", "list", "--json"]);
  assert.equal(list.status, 0, list.stderr);
  const [site] = JSON.parse(list.stdout) as Array<{ keyId: string; site: boolean; addedAt: string }>;
  assert.equal(site?.site, true);
  return site;
}

test("trust list: the site's own key has a real addedAt (when it was created)", async (t) => {
  const { env } = await daemon(t);
  const site = await siteKey(env);
  assert.ok(site.addedAt !== "" && !Number.isNaN(Date.parse(site.addedAt)) && Date.parse(site.addedAt) <= Date.now(), `the site key's addedAt is a time: ${JSON.stringify(site.addedAt)}`);
});

test("trust remove of the site's own key is a distinct error with exit 4; an unknown key stays exit 3", async (t) => {
  const { env } = await daemon(t);
  const site = await siteKey(env);
  const removeSite = await cli(env, ["trust", "remove", site.keyId]);
  assert.equal(removeSite.status, 4, removeSite.stderr);
  assert.match(removeSite.stderr, new RegExp(`The site's own key "${site.keyId}" cannot be removed: it signs this site's bundles`));
  assert.doesNotMatch(removeSite.stderr, /No trusted key/);
  oneLine(removeSite);
  const removeUnknown = await cli(env, ["trust", "remove", "0123456789abcdef"]);
  assert.equal(removeUnknown.status, 3, removeUnknown.stderr);
  assert.match(removeUnknown.stderr, /No trusted key with id "0123456789abcdef"/);
});

test("trust add of an already-trusted key is refused with exit 4 naming its name, and does not rename it", async (t) => {
  const { env } = await daemon(t);
  const pem = join(env.VIGIL_HOME!, "partner.pem");
  writeFileSync(pem, generateKeyPairSync("ed25519").publicKey.export({ type: "spki", format: "pem" }));
  assert.equal((await cli(env, ["trust", "add", pem, "--name", "partner"])).status, 0);
  const again = await cli(env, ["trust", "add", pem, "--name", "other"]);
  assert.equal(again.status, 4, again.stderr);
  assert.match(again.stderr, /is already trusted as "partner" \(added by .+\); to rename it, remove it and add it again/);
  oneLine(again);
  const after = JSON.parse((await cli(env, ["trust", "list", "--json"])).stdout) as Array<{ name: string; site: boolean }>;
  assert.deepEqual(after.filter((k) => !k.site).map((k) => k.name), ["partner"], "the key keeps its name");
});

test("group remove-member of a non-member exits 4 saying so; user set with nothing to change exits 2 naming the options", async (t) => {
  const { env } = await daemon(t);
  assert.equal((await cli(env, ["group", "add", "devs"])).status, 0);
  assert.equal((await cli(env, ["user", "add", "carol"])).status, 0);
  const remove = await cli(env, ["group", "remove-member", "devs", "carol"]);
  assert.equal(remove.status, 4, remove.stderr);
  assert.equal(remove.stderr, 'vigil: Cannot remove user "carol" from group "devs": not a member\n');
  assert.equal(remove.stdout, "", "no claim that carol was removed");
  const set = await cli(env, ["user", "set", "carol"]);
  assert.equal(set.status, 2, set.stderr);
  assert.match(set.stderr, /Nothing to change for user "carol": give --role, --introspect, --no-introspect, --disable or --enable/);
  assert.doesNotMatch(set.stdout, /updated/);
  oneLine(set);
});

test("snapshot revert --reason without --force is a usage error before any request", async (t) => {
  const r = await cli({ VIGIL_HOME: tempHome(t), VIGIL_URL: "" }, ["snapshot", "revert", "vm1", "s1", "--reason", "foo"]);
  assert.equal(r.status, 2, r.stderr);
  assert.match(r.stderr, /--reason is only meaningful with --force/);
  oneLine(r);
});

test("whoami shows the introspect grant as its own field, not as a role; audit verify counts in good English", async (t) => {
  const { env } = await daemon(t);
  const me = await cli(env, ["whoami"]);
  assert.equal(me.status, 0, me.stderr);
  assert.match(me.stdout, /\(roles: admin; introspect: yes; groups: /);
  const verify = await cli(env, ["audit", "verify"]);
  assert.equal(verify.status, 0, verify.stderr);
  assert.match(verify.stdout, /^OK: (1 record|\d+ records), (1 signed checkpoint|\d+ signed checkpoints), chain intact$/m);
});

test("the daemon-unreachable hint names a custom VIGIL_HOME instead of suggesting npm start", async (t) => {
  const home = tempHome(t);
  const r = await cli({ VIGIL_HOME: home, VIGIL_URL: "" }, ["vm", "list"]);
  assert.equal(r.status, 6, r.stderr);
  assert.ok(r.stderr.includes(`start it with \`VIGIL_HOME=${home} vigil serve\``), r.stderr);
  assert.doesNotMatch(r.stderr, /npm start/);
  oneLine(r);
});

test("an unknown command is one line and exit 2; vigil alone still prints the help", async (t) => {
  const env = { VIGIL_HOME: tempHome(t), VIGIL_URL: "" };
  const bogus = await cli(env, ["bogus"]);
  assert.equal(bogus.status, 2);
  assert.equal(bogus.stderr, 'vigil: unknown command "bogus" (see vigil --help)\n');
  const sub = await cli(env, ["vm", "bogus"]);
  assert.equal(sub.status, 2);
  assert.equal(sub.stderr, 'vigil: unknown command "vm bogus" (see vigil vm --help)\n');
  const bare = await cli(env, []);
  assert.match(bare.stdout + bare.stderr, /^Usage: vigil \[options\] \[command\]/m);
});

test("vm list shows ACCEL only for a live VM; --json keeps the recorded accelerator", async (t) => {
  const { d, env } = await daemon(t);
  const image = { name: "tiny", boot: { kind: "kernel" as const, kernel: "/k", initrd: "/i", cmdline: "" }, disk: "/d" };
  for (const [name, state] of [["ran", "stopped"], ["live", "paused"]] as const) {
    const spec = resolveSpec(createVmRequestSchema.parse({ name, memoryMiB: 128 }), image, { cpu: "max" });
    const vm = await d.repo.insert({ id: crypto.randomUUID(), name, spec, state: "stopped", host: "h", vmgenid: crypto.randomUUID(), generation: 1, owner: "user:root", approver: null, purpose: null, expiresAt: null, labels: {}, lineage: { kind: "image", image: "tiny" }, isTemplate: false, createdBy: "root", createdAt: new Date().toISOString() });
    await d.repo.update(vm.id, { state, accelerator: "tcg" });
  }
  const r = await cli(env, ["vm", "list"]);
  assert.equal(r.status, 0, r.stderr);
  const accel = (name: string) => {
    const [header, ...rows] = r.stdout.trimEnd().split("\n");
    const at = header!.indexOf("ACCEL");
    return rows.find((l) => l.startsWith(`${name} `))!.slice(at).split(/\s+/)[0];
  };
  assert.equal(accel("ran"), "-", "a stopped VM has no accelerator now");
  assert.equal(accel("live"), "tcg");
  const json = JSON.parse((await cli(env, ["vm", "list", "--json"])).stdout) as Array<{ name: string; accelerator: string | null }>;
  assert.equal(json.find((v) => v.name === "ran")?.accelerator, "tcg", "the JSON keeps the recorded field");
});

test("the stored login token goes only to the URL it was stored for, never to another VIGIL_URL", async (t) => {
  const seen: Array<string | undefined> = [];
  const server = createServer((req, res) => {
    seen.push(req.headers.authorization);
    res.writeHead(401, { "content-type": "application/json" });
    res.end(JSON.stringify({ error: { code: "VIGIL_UNAUTHENTICATED", message: "A valid token is required" } }));
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
  t.after(() => server.close());
  const xdg = tempHome(t);
  mkdirSync(join(xdg, "vigil"));
  const port = (server.address() as AddressInfo).port;
  writeFileSync(join(xdg, "vigil", "config.json"), JSON.stringify({ url: "http://127.0.0.2:7450", token: "vgl_stored-secret" }));
  const r = await cli({ XDG_CONFIG_HOME: xdg, VIGIL_URL: `http://127.0.0.1:${port}`, VIGIL_TOKEN: undefined, VIGIL_HOME: undefined }, ["whoami"]);
  assert.equal(r.status, 5, r.stderr);
  assert.deepEqual(seen, [undefined], "the token stored for another URL must not be sent");
  // The same URL as stored (spelled with a trailing slash) gets it.
  writeFileSync(join(xdg, "vigil", "config.json"), JSON.stringify({ url: `http://127.0.0.1:${port}/`, token: "vgl_stored-secret" }));
  await cli({ XDG_CONFIG_HOME: xdg, VIGIL_URL: `http://127.0.0.1:${port}`, VIGIL_TOKEN: undefined, VIGIL_HOME: undefined }, ["whoami"]);
  assert.deepEqual(seen, [undefined, "Bearer vgl_stored-secret"]);
});

test("login makes an existing config file 0600 again", async (t) => {
  const home = tempHome(t);
  const tcp = await startDaemon({ home, cache: join(home, "no-cache"), listen: "127.0.0.1:0", log: silentLogger() });
  t.after(() => tcp.close());
  const token = (await tcp.deps.users.issueToken(tcp.deps.localUser, "t")).token;
  const xdg = tempHome(t);
  mkdirSync(join(xdg, "vigil"));
  const path = join(xdg, "vigil", "config.json");
  writeFileSync(path, "{}", { mode: 0o644 });
  chmodSync(path, 0o644);
  const r = await cli({ XDG_CONFIG_HOME: xdg, VIGIL_TOKEN: token, VIGIL_URL: undefined, VIGIL_HOME: undefined }, ["login", "--url", `http://127.0.0.1:${tcp.tcpAddress!.port}`]);
  assert.equal(r.status, 0, r.stderr);
  assert.equal(statSync(path).mode & 0o777, 0o600);
});

test("login to an https daemon pins its certificate; later commands use the pin; a wrong --fingerprint is refused", async (t) => {
  const home = tempHome(t);
  const d = await startDaemon({ home, cache: join(home, "no-cache"), listen: "127.0.0.1:0", tls: "auto", log: silentLogger() });
  t.after(() => d.close());
  const token = (await d.deps.users.issueToken(d.deps.localUser, "t")).token;
  const xdg = tempHome(t);
  const url = `https://127.0.0.1:${d.tcpAddress!.port}`;
  const env = { XDG_CONFIG_HOME: xdg, VIGIL_URL: undefined, VIGIL_HOME: undefined };
  const wrong = await cli({ ...env, VIGIL_TOKEN: token }, ["login", "--url", url, "--fingerprint", "AA:BB"]);
  assert.equal(wrong.status, 5, wrong.stderr);
  assert.match(wrong.stderr, /presented certificate .* not AA:BB: not logging in/);
  const r = await cli({ ...env, VIGIL_TOKEN: token }, ["login", "--url", url, "--fingerprint", d.tlsFingerprint!]);
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, new RegExp(`certificate ${d.tlsFingerprint!} pinned`));
  const me = await cli({ ...env, VIGIL_TOKEN: undefined }, ["whoami"]);
  assert.equal(me.status, 0, me.stderr);
  assert.match(me.stdout, /via token/);
});

test("token list shows your tokens without secrets; token revoke ID revokes that one and those minted with it", async (t) => {
  const { d, env } = await daemon(t);
  const parent = await d.deps.users.issueToken(d.deps.localUser, "laptop");
  await d.deps.users.issueToken(d.deps.localUser, "child", undefined, { id: parent.id, expiresAt: null });
  const list = await cli(env, ["token", "list", "--json"]);
  assert.equal(list.status, 0, list.stderr);
  const tokens = JSON.parse(list.stdout) as Array<{ id: string; name: string; parentId: string | null }>;
  assert.deepEqual(tokens.map((x) => [x.name, x.parentId === parent.id]).sort(), [["child", true], ["laptop", false]]);
  assert.ok(!list.stdout.includes(parent.token));
  const revoke = await cli(env, ["token", "revoke", parent.id]);
  assert.equal(revoke.status, 0, revoke.stderr);
  assert.equal(revoke.stdout, "Revoked 2 token(s)\n");
  assert.equal(await d.deps.users.authenticate(parent.token), undefined);
});

test("on a terminal, a command that follows its progress exits as soon as its work is done", async (t) => {
  const { env } = await daemon(t);
  const disk = join(env.VIGIL_HOME!, "small.raw");
  execFileSync("qemu-img", ["create", "-q", "-f", "raw", disk, "1M"]);
  // `script` gives the CLI a pseudo-terminal, so it follows /v1/events?progress=… while it works. Left open, that
  // stream kept the process alive after "Imported" was printed.
  const command = [process.execPath, "--import", "tsx", "--input-type=module", "-e", ENTRY, "image", "import", disk, "--name", "small", "--format", "raw"].map((a) => `'${a.replaceAll("'", "'\\''")}'`).join(" ");
  // Asynchronously: the daemon answering the CLI runs in this very process.
  const r = await new Promise<{ status: number | null; stdout: string; timedOut: boolean }>((resolve) => {
    const child = spawn("script", ["-qec", command, "/dev/null"], { env: { ...process.env, VIGIL_LOG_LEVEL: "silent", ...env }, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      resolve({ status: null, stdout, timedOut: true });
    }, 30_000);
    child.on("close", (status) => {
      clearTimeout(timer);
      resolve({ status, stdout, timedOut: false });
    });
  });
  assert.equal(r.timedOut, false, `the command did not exit within 30 s after: ${JSON.stringify(r.stdout.slice(-200))}`);
  assert.equal(r.status, 0, r.stdout);
  assert.match(r.stdout, /Imported small\.raw as image small/);
});

test("vm create --net NAME adds bridged NICs after any --nic ones; vm show prints plugged NICs; --net with --no-nic is a usage error", async (t) => {
  const bodies: unknown[] = [];
  const server = createServer((req, res) => {
    let body = "";
    req.on("data", (c: Buffer) => (body += c.toString()));
    req.on("end", () => {
      if (req.method === "GET") {
        res.writeHead(200, { "content-type": "application/json" });
        const nics = [{ name: "net1", network: "lab", ip: "10.77.0.5", mac: "52:54:00:00:00:01", tap: "vt-0123456789" }];
        res.end(JSON.stringify({ id: "id-1", name: "x", state: "running", spec: { vcpus: 1, memoryMiB: 128, image: "tiny" }, paths: {}, nics }));
        return;
      }
      bodies.push(JSON.parse(body || "null"));
      res.writeHead(201, { "content-type": "application/json" });
      res.end(JSON.stringify({ id: "id-1", name: "x" }));
    });
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
  t.after(() => server.close());
  const env = { VIGIL_URL: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, VIGIL_TOKEN: "t" };
  const r = await cli(env, ["vm", "create", "x", "--nic", "open", "--net", "lab", "--net", "dmz"]);
  assert.equal(r.status, 0, r.stderr);
  assert.deepEqual((bodies[0] as { nics: unknown }).nics, [{ restrict: false }, { network: "lab" }, { network: "dmz" }]);
  const plain = await cli(env, ["vm", "create", "y"]);
  assert.equal(plain.status, 0, plain.stderr);
  assert.equal((bodies[1] as { nics?: unknown }).nics, undefined, "no flag: the server's default (one restricted user NIC)");
  const shown = await cli(env, ["vm", "show", "x"]);
  assert.match(shown.stdout, /^nic {10}net1: network lab, ip 10\.77\.0\.5, mac 52:54:00:00:00:01, tap vt-0123456789$/m);
  const both = await cli(env, ["vm", "create", "z", "--no-nic", "--net", "lab"]);
  assert.equal(both.status, 2, both.stderr);
  assert.match(both.stderr, /Use either --net or --no-nic, not both/);
  assert.equal(bodies.length, 2, "refused before any request");
});
