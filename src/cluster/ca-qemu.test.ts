/**
 * QEMU itself loads what writeQemuCredsDir writes: a QEMU with no machine, running as the uid the files belong to
 * (as the jail runs it), takes `object-add tls-creds-x509` for both endpoints with verify-peer, and refuses a
 * damaged directory or one it cannot read. QEMU's own checks (chain, key usage, purpose, key/cert match, times)
 * are the judge here.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { chmodSync, chownSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { QmpClient } from "../qemu/qmp-client.ts";
import { initCa, issueCertificate, issueMigrationPair, writeQemuCredsDir, type Ca } from "./ca.ts";

const UID = 47123; // no such user: QEMU reads the files only because they are this uid's
let root: string;
let ca: Ca;
let qemu: ChildProcess;
let qmp: QmpClient;

before(async () => {
  root = mkdtempSync(join(tmpdir(), "vt-ca-qemu-"));
  chmodSync(root, 0o711); // the uid must be able to walk into its own directories
  ca = await initCa(join(root, "ca"));
  const run = join(root, "run");
  mkdirSync(run, { mode: 0o700 });
  chownSync(run, UID, UID);
  const sock = join(run, "qmp.sock");
  qemu = spawn("qemu-system-x86_64", ["-machine", "none", "-nodefaults", "-no-user-config", "-display", "none", "-S", "-qmp", `unix:${sock},server=on,wait=off`], { uid: UID, gid: UID, stdio: ["ignore", "ignore", "pipe"] });
  let stderr = "";
  qemu.stderr?.on("data", (d: Buffer) => (stderr += d.toString()));
  for (let i = 0; ; i++) {
    try {
      qmp = await QmpClient.connect(sock, { timeoutMs: 5000 });
      break;
    } catch (err) {
      if (i > 100 || qemu.exitCode !== null) throw new Error(`QEMU did not start: ${stderr}`, { cause: err });
      await sleep(100);
    }
  }
});

after(async () => {
  await qmp?.close().catch(() => undefined);
  qemu?.kill("SIGKILL");
  rmSync(root, { recursive: true, force: true });
});

let n = 0;
const addCreds = (dir: string, endpoint: "server" | "client") =>
  qmp.execute("object-add", { "qom-type": "tls-creds-x509", id: `tls${n++}`, dir, endpoint, "verify-peer": true });

test("QEMU loads a migration pair's directories for both endpoints, verify-peer on", async () => {
  const { src, dst } = await issueMigrationPair(ca, "m-qemu");
  writeQemuCredsDir(join(root, "dst"), dst, "server", UID);
  writeQemuCredsDir(join(root, "src"), src, "client", UID);
  await addCreds(join(root, "dst"), "server");
  await addCreds(join(root, "src"), "client");
});

test("QEMU refuses the directory when the key does not match, the certificate is damaged, or it cannot read it", async () => {
  const { dst } = await issueMigrationPair(ca, "m-bad");
  const other = await issueCertificate(ca, { role: "agent", name: "x" });
  writeQemuCredsDir(join(root, "mismatch"), { ...dst, keyPem: other.keyPem }, "server", UID);
  await assert.rejects(addCreds(join(root, "mismatch"), "server"), /do not match/);

  writeQemuCredsDir(join(root, "damaged"), dst, "server", UID);
  writeFileSync(join(root, "damaged", "server-cert.pem"), dst.certPem.slice(0, 200));
  await assert.rejects(addCreds(join(root, "damaged"), "server"), /Unable to import server certificate/);

  // A server certificate used as a client one: QEMU's purpose check (the EKU says serverAuth only).
  writeQemuCredsDir(join(root, "wrong-purpose"), dst, "client", UID);
  await assert.rejects(addCreds(join(root, "wrong-purpose"), "client"), /purpose does not allow use with a TLS client/);

  // Right content, wrong owner: the jailed QEMU cannot read root's 0600 files.
  writeQemuCredsDir(join(root, "root-owned"), dst, "server", 0);
  await assert.rejects(addCreds(join(root, "root-owned"), "server"), /Permission denied/);

  const foreign = await initCa(join(root, "foreign-ca"));
  writeQemuCredsDir(join(root, "foreign"), { ...dst, caPem: foreign.certPem }, "server", UID);
  await assert.rejects(addCreds(join(root, "foreign"), "server"), /known issuer/);
});
