/**
 * Reaching the cluster manager like a single host (docs/cluster.md "Reaching the manager"): the manager listens on
 * its own underlay address with HTTPS (the site certificate) and tokens; the real CLI, run inside the manager's
 * namespace, logs in (pinning the certificate), lists VMs, creates and starts one, and talks to its serial console
 * through the manager (the guest answers), and so does the web console's WebSocket (session cookie, Origin checked);
 * it exports a bundle through the manager and imports it onto the other host, lists recordings, and scrapes the
 * merged /metrics. A token without roles gets 403 on the manager's read routes while an
 * admin's gets them, and an agent refuses a console upgrade from another agent's (valid) certificate.
 */
import { strict as assert } from "node:assert";
import { spawn, spawnSync } from "node:child_process";
import { mkdtempSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { test } from "node:test";
import { cluster } from "../cluster-topology.ts";
import { BIN, ROOT, waitFor } from "../harness.ts";

const URL_ = "https://10.251.0.100:7450";

/** Raw probes run inside a namespace: HTTPS GET statuses with a token, and a console upgrade with an agent certificate. */
const PROBE = `
import { request } from "node:https";
import { connect } from "node:tls";
import { readFileSync } from "node:fs";
const [mode, ...rest] = process.argv.slice(2);
if (mode === "get") {
  const [base, token, ...paths] = rest;
  const out = {};
  for (const p of paths) {
    out[p] = await new Promise((res, rej) => {
      const u = new URL(p, base);
      const r = request({ host: u.hostname, port: u.port, path: u.pathname + u.search, rejectUnauthorized: false, headers: { authorization: "Bearer " + token, accept: "application/json" } }, (m) => { m.resume(); m.on("end", () => res(m.statusCode)); });
      r.on("error", rej);
      r.end();
    });
  }
  console.log(JSON.stringify(out));
} else if (mode === "body") {
  const [base, token, path] = rest;
  const u = new URL(path, base);
  const r = request({ host: u.hostname, port: u.port, path: u.pathname + u.search, rejectUnauthorized: false, headers: { authorization: "Bearer " + token } }, (m) => {
    let body = "";
    m.on("data", (d) => (body += d));
    m.on("end", () => console.log(JSON.stringify({ status: m.statusCode, type: m.headers["content-type"], body })));
  });
  r.on("error", (e) => { console.error(e.message); process.exit(1); });
  r.end();
} else if (mode === "ws") {
  // The browser's console through the manager: log in for the cookie, then the WebSocket with an Origin.
  const [base, token, vm, marker, origin] = rest;
  const cookie = await new Promise((res, rej) => {
    const u = new URL("/v1/session", base);
    const r = request({ host: u.hostname, port: u.port, path: u.pathname, method: "POST", rejectUnauthorized: false, headers: { "content-type": "application/json" } }, (m) => { m.resume(); res(String(m.headers["set-cookie"]).split(";")[0]); });
    r.on("error", rej);
    r.end(JSON.stringify({ token }));
  });
  const { WebSocket } = await import(${JSON.stringify(pathToFileURL(join(ROOT, "node_modules/ws/wrapper.mjs")).href)});
  const ws = new WebSocket(base.replace("https:", "wss:") + "/v1/vms/" + vm + "/console/ws", { headers: { origin, cookie }, rejectUnauthorized: false });
  let out = "";
  const done = (r) => { console.log(JSON.stringify(r)); process.exit(0); };
  setTimeout(() => done({ ok: false, out: out.slice(-300) }), 60000);
  ws.on("open", () => { const say = () => ws.send("echo " + marker + "-$((6*7))\\n"); say(); setInterval(say, 2000); });
  ws.on("message", (d) => { out += d.toString(); if (out.includes(marker + "-42")) done({ ok: true }); });
  ws.on("unexpected-response", (_q, res) => done({ ok: false, status: res.statusCode }));
  ws.on("error", (e) => done({ ok: false, error: e.message }));
} else {
  const [host, port, dir, path] = rest;
  const actor = JSON.stringify({ name: "root", roles: ["admin"], groups: [], introspect: true });
  const s = connect({ host, port: Number(port), ca: readFileSync(dir + "/ca-cert.pem"), cert: readFileSync(dir + "/agent-cert.pem"), key: readFileSync(dir + "/agent-key.pem"), rejectUnauthorized: false }, () => {
    s.write("GET " + path + " HTTP/1.1\\r\\nhost: x\\r\\nconnection: Upgrade\\r\\nupgrade: vigil-console\\r\\nx-vigil-actor: " + actor + "\\r\\n\\r\\n");
  });
  let buf = "";
  s.on("data", (d) => { buf += d; if (buf.includes("\\r\\n\\r\\n")) { console.log(buf.split("\\r\\n")[0] + " " + buf.slice(buf.indexOf("\\r\\n\\r\\n") + 4)); s.destroy(); } });
  s.on("error", (e) => console.log("error " + e.message));
}
`;

test("a token user reaches the manager over HTTPS and uses a guest's console through it; read routes refuse a roleless token; an agent refuses another agent's console upgrade", { timeout: 600_000 }, async (t) => {
  const { manager, agents, topo, credentials } = await cluster(t, { managerArgs: ["--listen", "10.251.0.100:7450"] });
  const work = mkdtempSync(join(tmpdir(), "vt-mgrnet-cli-"));
  const probe = join(work, "probe.mjs");
  writeFileSync(probe, PROBE);
  const token = (who: string, ...roles: string[]) => {
    const r = manager.cli("user", "add", who, ...roles.flatMap((x) => ["--role", x]), "--json");
    assert.equal(r.status, 0, r.stderr);
    return (JSON.parse(r.stdout) as { token: string }).token;
  };
  const olga = token("olga", "owner");
  const nobody = token("nobody");
  const ada = token("ada", "admin");
  const env: NodeJS.ProcessEnv = { ...process.env, XDG_CONFIG_HOME: join(work, "config"), VIGIL_URL: URL_ };
  delete env.VIGIL_HOME;
  delete env.VIGIL_TOKEN;
  const inNs = (ns: string, argv: string[]) => ["nsenter", `--net=/run/netns/${ns}`, "--", process.execPath, ...argv];
  const cli = (args: string[], input?: string) => {
    const [file, ...rest] = inNs(topo.manager.netns, [BIN, ...args]);
    const r = spawnSync(file!, rest, { env, input, encoding: "utf8", timeout: 300_000 });
    return { status: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
  };

  // Log in as a single host's user would: the certificate is pinned, the token stored for that URL.
  const login = cli(["login", "--url", URL_], `${olga}\n`);
  assert.equal(login.status, 0, login.stderr);
  assert.match(login.stdout, /as olga \(certificate .* pinned\)/);
  assert.equal(cli(["whoami", "--json"]).status, 0);
  const create = cli(["vm", "create", "con", "--memory", "128"]);
  assert.equal(create.status, 0, create.stderr);
  const start = cli(["vm", "start", "con", "--wait"]);
  assert.equal(start.status, 0, start.stderr);
  const list = cli(["vm", "list", "--json"]);
  assert.equal(list.status, 0, list.stderr);
  const vms = JSON.parse(list.stdout) as { name: string; host: string; owner: string }[];
  const con = vms.find((v) => v.name === "con");
  assert.ok(con && ["h1", "h2"].includes(con.host), list.stdout);
  assert.equal(con.owner, "user:olga");

  // The console through the manager: the CLI's stdin goes to the guest's shell, its answer comes back.
  const [file, ...rest] = inNs(topo.manager.netns, [BIN, "vm", "console", "con"]);
  const child = spawn(file!, rest, { env, stdio: ["pipe", "pipe", "pipe"] });
  t.after(() => void child.kill("SIGKILL"));
  let out = "";
  let err = "";
  child.stdout.on("data", (d: Buffer) => (out += d.toString()));
  child.stderr.on("data", (d: Buffer) => (err += d.toString()));
  const marker = `through-the-manager-${process.pid}`;
  await waitFor(() => {
    child.stdin.write(`echo ${marker}-$((6*7))\n`);
    return out.includes(`${marker}-42`);
  }, 60_000, "the guest to answer on its console through the manager").catch((e: Error) => {
    throw new Error(`${e.message}: stdout ${JSON.stringify(out.slice(-500))} stderr ${JSON.stringify(err.slice(-500))}`);
  });
  assert.match(err, /Connected to the console of con/);
  child.stdin.write("\x1d"); // Ctrl-]: the CLI leaves, and the manager closes the agent's side
  await waitFor(() => child.exitCode !== null, 15_000, "the console client to leave").catch((e: Error) => {
    throw new Error(`${e.message}: stderr ${JSON.stringify(err.slice(-300))}`);
  });
  assert.equal(child.exitCode, 0, err);
  // The agent that holds the VM authorized and audited the console for olga (the manager acted for her).
  const holder = (await manager.api<{ vms: { name: string; host: string }[] }>("GET", "/v1/vms")).vms.find((v) => v.name === "con")!.host;
  const holding = agents[holder === "h1" ? 0 : 1]!;
  const seen = (await holding.api<{ records: { actor: string; action: string; result: string }[] }>("GET", "/v1/audit?limit=10000")).records;
  assert.ok(seen.some((r) => r.actor === "olga" && r.action === "vm.console" && r.result === "ok"), "the holding agent audited olga's console");

  // The web console's console socket through the manager: a foreign Origin is refused; the manager's own
  // origin with olga's session cookie reaches the guest's shell, bridged to the holding agent's console.
  const ws = (origin: string) => {
    const [f, ...a] = inNs(topo.manager.netns, [probe, "ws", URL_, olga, "con", `${marker}-ws`, origin]);
    const r = spawnSync(f!, a, { encoding: "utf8", timeout: 90_000 });
    assert.equal(r.status, 0, r.stderr);
    return JSON.parse(r.stdout) as { ok: boolean; status?: number };
  };
  assert.deepEqual(ws("https://evil.example"), { ok: false, status: 403 });
  assert.deepEqual(ws(URL_), { ok: true }, "the guest answered on the browser's console socket through the manager");

  // A bundle through the manager: exported from the holder as it streams, imported onto the other host (the
  // manager passes the upload on as it arrives), and the copy is placed there, owned by who imported it.
  const other = holder === "h1" ? "h2" : "h1";
  const stop = cli(["vm", "stop", "con", "--timeout", "120"]);
  assert.equal(stop.status, 0, stop.stderr);
  const bundlePath = join(work, "con.vigil");
  const exported = cli(["vm", "export", "con", "--output", bundlePath]);
  assert.equal(exported.status, 0, exported.stderr);
  assert.ok(statSync(bundlePath).size > 1024, `a bundle: ${statSync(bundlePath).size} bytes`);
  const imported = cli(["vm", "import", bundlePath, "--name", "con2", "--host", other]);
  assert.equal(imported.status, 0, imported.stderr);
  assert.match(imported.stdout, new RegExp(`as VM con2 .* on ${other}`));
  const copies = JSON.parse(cli(["vm", "list", "--json"]).stdout) as { name: string; host: string; owner: string }[];
  assert.deepEqual(copies.filter((v) => v.name === "con2").map((v) => [v.host, v.owner]), [[other, "user:olga"]]);
  const otherAgent = agents[other === "h1" ? 0 : 1]!;
  const otherAudit = (await otherAgent.api<{ records: { actor: string; action: string; result: string }[] }>("GET", "/v1/audit?limit=10000")).records;
  assert.ok(otherAudit.some((r) => r.actor === "olga" && r.action === "vm.import" && r.result === "ok"), "the target host audited olga's import");
  assert.ok(otherAudit.some((r) => r.actor === "system" && r.action === "trust.add" && r.result === "ok"), "the manager made it trust the exporting host's key first");
  const notReady = cli(["vm", "import", bundlePath, "--name", "con3", "--host", "h9"]);
  assert.notEqual(notReady.status, 0);
  assert.match(notReady.stderr, /Host "h9" cannot take VMs now/);
  // Recordings are listed from every host; /metrics merges every host's series under the host's cluster name.
  const recs = cli(["recording", "list", "--json"]);
  assert.equal(recs.status, 0, recs.stderr);
  assert.deepEqual((JSON.parse(recs.stdout) as { recordings: unknown[] }).recordings, []);
  const [mf, ...ma] = inNs(topo.manager.netns, [probe, "body", URL_, olga, "/metrics"]);
  const metrics = spawnSync(mf!, ma, { encoding: "utf8", timeout: 60_000 });
  assert.equal(metrics.status, 0, metrics.stderr);
  const scraped = JSON.parse(metrics.stdout) as { status: number; type: string; body: string };
  assert.equal(scraped.status, 200);
  assert.match(scraped.type, /version=0\.0\.4/);
  assert.match(scraped.body, new RegExp(`vigil_vm_memory_configured_bytes\\{vm="con",host="${holder}"\\} 134217728`));
  assert.match(scraped.body, new RegExp(`vigil_vm_memory_configured_bytes\\{vm="con2",host="${other}"\\} 134217728`));
  assert.equal(scraped.body.match(/^# TYPE vigil_vm_running /gm)?.length, 1, "each family once");

  // Read routes: a token with no role is refused (403) on each, an admin's token gets them all.
  const reads = ["/v1/hosts", "/v1/migrations", "/v1/cluster/balance", "/v1/cluster/consolidate", "/v1/events?after=0"];
  const statuses = (tok: string) => {
    const [f, ...a] = inNs(topo.manager.netns, [probe, "get", URL_, tok, ...reads]);
    const r = spawnSync(f!, a, { encoding: "utf8", timeout: 60_000 });
    assert.equal(r.status, 0, r.stderr);
    return JSON.parse(r.stdout) as Record<string, number>;
  };
  assert.deepEqual(Object.values(statuses(nobody)), reads.map(() => 403), "a roleless token gets none of them");
  assert.deepEqual(Object.values(statuses(ada)), reads.map(() => 200), "an admin's token gets them all");
  const { records } = await manager.api<{ records: { actor: string; action: string; result: string }[] }>("GET", "/v1/audit?limit=10000");
  assert.ok(records.some((r) => r.actor === "nobody" && r.action === "host.list" && r.result === "denied"), "the refusals are audited");

  // The agent's cluster listener takes a console upgrade only from the manager's certificate: another agent's
  // certificate (valid, same CA) is refused with 403, whatever user it claims to act for.
  const hostIndex = holder === "h1" ? 0 : 1;
  const otherCreds = credentials[1 - hostIndex]!;
  const addr = topo.hosts[hostIndex]!.addr;
  const argv = inNs(topo.manager.netns, [probe, "upgrade", addr, "7451", otherCreds, "/v1/vms/con/console"]);
  const up = spawnSync(argv[0]!, argv.slice(1), { encoding: "utf8", timeout: 60_000 });
  assert.equal(up.status, 0, up.stderr);
  assert.match(up.stdout, /^HTTP\/1\.1 403 /, up.stdout);
  assert.match(up.stdout, /OU=agent/, "refused for its certificate's role");
});
