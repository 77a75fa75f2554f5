/**
 * QEMU itself uses what this module makes: QEMUs with no machine, running as the uid the files belong to (as the
 * jail runs them), load writeQemuCredsDir's directories with `tls-creds-x509` (verify-peer) and carry a TLS
 * migration with the ephemeral pair, tls-hostname and authz as docs/cluster.md describes. QEMU's own checks
 * (chain, key usage, purpose, key/cert match, hostname, authz) are the judge here.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { chmodSync, chownSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { QmpClient } from "../qemu/qmp-client.ts";
import { initCa, issueCertificate, issueMigrationPair, migrationHostname, qemuTlsIdentity, writeQemuCredsDir, type Ca } from "./ca.ts";

const UID = 47123; // no such user: QEMU reads the files only because they are this uid's
let root: string;
let run: string;
let ca: Ca;
const procs: ChildProcess[] = [];
const monitors: QmpClient[] = [];

/** A QEMU with no machine, paused, as UID, its QMP socket in the uid's run dir. */
async function startQemu(name: string, extra: string[] = []): Promise<QmpClient> {
  const sock = join(run, `${name}.qmp`);
  const proc = spawn("qemu-system-x86_64", ["-machine", "none", "-nodefaults", "-no-user-config", "-display", "none", "-S", "-qmp", `unix:${sock},server=on,wait=off`, ...extra], { uid: UID, gid: UID, stdio: ["ignore", "ignore", "pipe"] });
  procs.push(proc);
  let stderr = "";
  proc.stderr?.on("data", (d: Buffer) => (stderr += d.toString()));
  for (let i = 0; ; i++) {
    try {
      const qmp = await QmpClient.connect(sock, { timeoutMs: 5000 });
      monitors.push(qmp);
      return qmp;
    } catch (err) {
      if (i > 100 || proc.exitCode !== null) throw new Error(`QEMU did not start: ${stderr}`, { cause: err });
      await sleep(100);
    }
  }
}

let loader: QmpClient;

before(async () => {
  root = mkdtempSync(join(tmpdir(), "vt-ca-qemu-"));
  chmodSync(root, 0o711); // the uid must be able to walk into its own directories
  ca = await initCa(join(root, "ca"));
  run = join(root, "run");
  mkdirSync(run, { mode: 0o700 });
  chownSync(run, UID, UID);
  loader = await startQemu("loader");
});

after(async () => {
  for (const m of monitors) await m.close().catch(() => undefined);
  for (const p of procs) p.kill("SIGKILL");
  rmSync(root, { recursive: true, force: true });
});

let n = 0;
const addCreds = (qmp: QmpClient, dir: string, endpoint: "server" | "client") =>
  qmp.execute("object-add", { "qom-type": "tls-creds-x509", id: `tls${n++}`, dir, endpoint, "verify-peer": true });

test("QEMU loads a migration pair's directories for both endpoints, verify-peer on", async () => {
  const { src, dst } = await issueMigrationPair(ca, "m-qemu");
  writeQemuCredsDir(join(run, "dst"), dst, "server", UID);
  writeQemuCredsDir(join(run, "src"), src, "client", UID);
  await addCreds(loader, join(run, "dst"), "server");
  await addCreds(loader, join(run, "src"), "client");
});

test("QEMU refuses the directory when the key does not match, the certificate is damaged, or it cannot read it", async () => {
  const { dst } = await issueMigrationPair(ca, "m-bad");
  const other = await issueCertificate(ca, { role: "agent", name: "x" });
  writeQemuCredsDir(join(run, "mismatch"), { ...dst, keyPem: other.keyPem }, "server", UID);
  await assert.rejects(addCreds(loader, join(run, "mismatch"), "server"), /do not match/);

  writeQemuCredsDir(join(run, "damaged"), dst, "server", UID);
  writeFileSync(join(run, "damaged", "server-cert.pem"), dst.certPem.slice(0, 200));
  await assert.rejects(addCreds(loader, join(run, "damaged"), "server"), /Unable to import server certificate/);

  // A server certificate used as a client one: QEMU's purpose check (the EKU is critical and says serverAuth).
  writeQemuCredsDir(join(run, "wrong-purpose"), dst, "client", UID);
  await assert.rejects(addCreds(loader, join(run, "wrong-purpose"), "client"), /purpose does not allow use with a TLS client/);

  // Right content, wrong owner: the jailed QEMU cannot read root's 0600 files.
  writeQemuCredsDir(join(run, "root-owned"), dst, "server", 0);
  await assert.rejects(addCreds(loader, join(run, "root-owned"), "server"), /Permission denied/);

  const foreign = await initCa(join(root, "foreign-ca"));
  writeQemuCredsDir(join(run, "foreign"), { ...dst, caPem: foreign.certPem }, "server", UID);
  await assert.rejects(addCreds(loader, join(run, "foreign"), "server"), /known issuer/);
});

/**
 * One TLS migration of an empty machine from a fresh source to a fresh target. `return-path` on both sides: without
 * it a source whose client certificate the target refuses can still report `completed` (TLS 1.3 lets the client
 * finish its handshake and write before the server's verdict arrives), which would make it quit a VM that never
 * arrived.
 */
async function migrate(id: string, o: { authz: string; hostname: string }): Promise<{ source: string; target: string }> {
  const { src, dst } = await issueMigrationPair(ca, id);
  writeQemuCredsDir(join(run, `${id}-dst`), dst, "server", UID);
  writeQemuCredsDir(join(run, `${id}-src`), src, "client", UID);
  const source = await startQemu(`${id}-a`);
  const target = await startQemu(`${id}-b`, ["-incoming", "defer"]);
  const returnPath = { capabilities: [{ capability: "return-path", state: true }] };
  await target.execute("object-add", { "qom-type": "tls-creds-x509", id: "tls0", dir: join(run, `${id}-dst`), endpoint: "server", "verify-peer": true });
  await target.execute("object-add", { "qom-type": "authz-simple", id: "authz0", identity: o.authz });
  await target.execute("migrate-set-capabilities", returnPath);
  await target.execute("migrate-set-parameters", { "tls-creds": "tls0", "tls-authz": "authz0" });
  await target.execute("migrate-incoming", { uri: `unix:${join(run, `${id}.mig`)}` });
  await source.execute("object-add", { "qom-type": "tls-creds-x509", id: "tls0", dir: join(run, `${id}-src`), endpoint: "client", "verify-peer": true });
  await source.execute("migrate-set-capabilities", returnPath);
  await source.execute("migrate-set-parameters", { "tls-creds": "tls0", "tls-hostname": o.hostname });
  await source.execute("migrate", { uri: `unix:${join(run, `${id}.mig`)}` });
  for (let i = 0; i < 100; i++) {
    const s = (await source.execute("query-migrate")) as { status?: string };
    if (s.status !== "setup" && s.status !== "active") {
      // A target whose incoming migration failed exits (QEMU's behaviour): that is its answer.
      const t = (await target.execute("query-migrate").catch(() => ({ status: "exited" }))) as { status?: string };
      return { source: s.status ?? "none", target: t.status ?? "none" };
    }
    await sleep(100);
  }
  throw new Error("the migration did not end within 10 s");
}

test("the ephemeral pair carries a real TLS migration: hostname <id>.migration.vigil, authz naming the source", async () => {
  const id = "m-ok";
  const { src } = await issueMigrationPair(ca, "m-ok-probe");
  assert.equal(qemuTlsIdentity(src.certPem), "O=vigil,OU=migration,CN=m-ok-probe-src");
  assert.deepEqual(await migrate(id, { authz: `O=vigil,OU=migration,CN=${id}-src`, hostname: migrationHostname(id) }), { source: "completed", target: "completed" });
});

test("a target whose authz names another source, or a source checking another hostname, fails the migration on the source", async () => {
  const authz = await migrate("m-authz", { authz: "O=vigil,OU=migration,CN=m-other-src", hostname: migrationHostname("m-authz") });
  assert.equal(authz.source, "failed");
  assert.notEqual(authz.target, "completed");
  const host = await migrate("m-host", { authz: "O=vigil,OU=migration,CN=m-host-src", hostname: migrationHostname("m-other") });
  assert.equal(host.source, "failed");
  assert.notEqual(host.target, "completed");
});
