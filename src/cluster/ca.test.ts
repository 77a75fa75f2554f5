import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { X509Certificate } from "node:crypto";
import { execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { VigilError } from "../errors.ts";
import { CA_FILES, initCa, issueCertificate, issueMigrationPair, loadCa, subjectOf, writeQemuCredsDir, type Ca } from "./ca.ts";

let root: string;
let ca: Ca;

before(async () => {
  root = mkdtempSync(join(tmpdir(), "vt-ca-test-"));
  ca = await initCa(join(root, "ca"));
});
after(() => rmSync(root, { recursive: true, force: true }));

const mode = (p: string) => statSync(p).mode & 0o777;

/** `openssl verify` of `certPem` against the CA, for `purpose`; the tool's own answer, not ours. */
function verify(caPem: string, certPem: string, purpose?: "sslserver" | "sslclient"): { ok: boolean; out: string } {
  const dir = mkdtempSync(join(root, "verify-"));
  writeFileSync(join(dir, "ca.pem"), caPem);
  writeFileSync(join(dir, "cert.pem"), certPem);
  try {
    const out = execFileSync("openssl", ["verify", "-CAfile", join(dir, "ca.pem"), ...(purpose ? ["-purpose", purpose] : []), join(dir, "cert.pem")], { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
    return { ok: true, out };
  } catch (err) {
    const e = err as { stdout?: string; stderr?: string };
    return { ok: false, out: `${e.stdout ?? ""}${e.stderr ?? ""}` };
  }
}

function rejectsWith(field: string) {
  return (err: unknown) => err instanceof VigilError && err.code === "VIGIL_BAD_REQUEST" && err.field === field;
}

test("initCa makes a P-256 CA (10 years) and the manager's client certificate; dir 0700, keys 0600", () => {
  const dir = join(root, "ca");
  assert.equal(mode(dir), 0o700);
  assert.equal(mode(join(dir, CA_FILES.caKey)), 0o600);
  assert.equal(mode(join(dir, CA_FILES.managerKey)), 0o600);
  assert.deepEqual(readdirSync(dir).sort(), Object.values(CA_FILES).sort(), "no staging leftovers");
  const cert = new X509Certificate(ca.certPem);
  assert.equal(cert.subject, "O=vigil\nOU=ca\nCN=vigil CA");
  assert.equal(cert.issuer, cert.subject);
  assert.equal(cert.ca, true);
  assert.equal(cert.publicKey.asymmetricKeyDetails?.namedCurve, "prime256v1");
  const tenYears = new Date();
  tenYears.setUTCFullYear(tenYears.getUTCFullYear() + 10);
  assert.ok(Math.abs(Date.parse(cert.validTo) - tenYears.getTime()) < 120_000, `CA valid until ${cert.validTo}`);
  assert.equal(verify(ca.certPem, ca.certPem).ok, true);

  const manager = new X509Certificate(ca.manager.certPem);
  assert.deepEqual(subjectOf(ca.manager.certPem), { role: "manager", name: "manager" });
  assert.equal(manager.checkIssued(cert), true);
  assert.equal(manager.ca, false);
  assert.equal(verify(ca.certPem, ca.manager.certPem, "sslclient").ok, true);
  assert.equal(verify(ca.certPem, ca.manager.certPem, "sslserver").ok, false, "a manager certificate cannot serve");
});

test("initCa refuses to replace a CA unless forced; --force makes a new one the old certificates do not verify against", async () => {
  const dir = join(root, "ca2");
  const first = await initCa(dir);
  await assert.rejects(initCa(dir), (err: unknown) => err instanceof VigilError && err.code === "VIGIL_CONFLICT" && /--force/.test(err.message));
  assert.equal(loadCa(dir).fingerprint, first.fingerprint, "the refused call changed nothing");
  const second = await initCa(dir, { force: true });
  assert.notEqual(second.fingerprint, first.fingerprint);
  assert.equal(loadCa(dir).fingerprint, second.fingerprint);
  assert.equal(verify(second.certPem, first.manager.certPem).ok, false);
  assert.equal(mode(join(dir, CA_FILES.caKey)), 0o600);
});

test("a failed initCa leaves nothing behind", async () => {
  const dir = join(root, "ca-fails");
  const path = process.env.PATH;
  process.env.PATH = "/nonexistent"; // openssl cannot be found: the first step fails
  try {
    await assert.rejects(initCa(dir), (err: unknown) => err instanceof VigilError && err.code === "VIGIL_HOST" && /openssl/.test(err.message));
  } finally {
    process.env.PATH = path;
  }
  assert.equal(existsSync(dir), false);
});

test("loadCa reads back what initCa made, and says when there is none or it is not a vigil CA", () => {
  const loaded = loadCa(join(root, "ca"));
  assert.equal(loaded.certPem, ca.certPem);
  assert.equal(loaded.keyPem, ca.keyPem);
  assert.deepEqual(loaded.manager, ca.manager);
  assert.throws(() => loadCa(join(root, "nothing")), (err: unknown) => err instanceof VigilError && err.code === "VIGIL_NOT_FOUND");
  const fake = join(root, "fake-ca");
  execFileSync("cp", ["-r", join(root, "ca"), fake]);
  writeFileSync(join(fake, CA_FILES.caCert), ca.manager.certPem);
  assert.throws(() => loadCa(fake), (err: unknown) => err instanceof VigilError && err.code === "VIGIL_HOST" && /not a vigil CA/.test(err.message));
});

test("loadCa refuses a CA whose files do not belong together (a torn init --force, a copied file)", async () => {
  const other = await initCa(join(root, "other-ca"));
  const torn = (name: string, from: string) => {
    const dir = mkdtempSync(join(root, "torn-"));
    execFileSync("cp", ["-r", join(root, "ca"), join(dir, "ca")]);
    writeFileSync(join(dir, "ca", name), readFileSync(join(other.dir, from)));
    return join(dir, "ca");
  };
  const damaged = (pattern: RegExp) => (err: unknown) => err instanceof VigilError && err.code === "VIGIL_HOST" && /is damaged/.test(err.message) && pattern.test(err.message);
  assert.throws(() => loadCa(torn(CA_FILES.caKey, CA_FILES.caKey)), damaged(/ca-key.pem is not the key of ca-cert.pem/));
  assert.throws(() => loadCa(torn(CA_FILES.managerKey, CA_FILES.managerKey)), damaged(/manager-key.pem is not the key/));
  const foreignManager = torn(CA_FILES.managerCert, CA_FILES.managerCert);
  writeFileSync(join(foreignManager, CA_FILES.managerKey), readFileSync(join(other.dir, CA_FILES.managerKey)));
  assert.throws(() => loadCa(foreignManager), damaged(/manager-cert.pem was not issued by this CA/));
  const dir = torn(CA_FILES.managerKey, CA_FILES.managerKey);
  writeFileSync(join(dir, CA_FILES.managerKey), "garbage");
  assert.throws(() => loadCa(dir), damaged(/./));
});

test("an agent certificate: OU=agent, its IP as SAN, server and client auth, random serial, 1 year", async () => {
  const a = await issueCertificate(ca, { role: "agent", name: "host-a", ips: ["10.0.0.2"] });
  const b = await issueCertificate(ca, { role: "agent", name: "host-a", ips: ["10.0.0.2"] });
  const cert = new X509Certificate(a.certPem);
  assert.equal(cert.subject, "O=vigil\nOU=agent\nCN=host-a");
  assert.equal(cert.subjectAltName, "IP Address:10.0.0.2");
  assert.deepEqual([...(cert.keyUsage ?? [])].sort(), ["1.3.6.1.5.5.7.3.1", "1.3.6.1.5.5.7.3.2"]);
  assert.notEqual(cert.serialNumber, new X509Certificate(b.certPem).serialNumber);
  assert.ok(cert.serialNumber.length >= 32, `serial ${cert.serialNumber} has at least 128 random bits`);
  assert.notEqual(a.keyPem, b.keyPem);
  assert.equal(cert.checkPrivateKey((await import("node:crypto")).createPrivateKey(a.keyPem)), true);
  const days = (Date.parse(cert.validTo) - Date.now()) / 86_400_000;
  assert.ok(days > 364 && days < 366, `valid ${days} days`);
  assert.ok(Date.parse(cert.validFrom) < Date.now() - 60_000, "backdated for clock skew");
  assert.equal(verify(ca.certPem, a.certPem, "sslserver").ok, true);
  assert.equal(verify(ca.certPem, a.certPem, "sslclient").ok, true);
  assert.equal(a.caPem, ca.certPem);
});

test("issueCertificate works in the CA's own directory and leaves nothing there, even when openssl fails", async () => {
  const path = process.env.PATH;
  const files = Object.values(CA_FILES).sort();
  await issueCertificate(ca, { role: "agent", name: "x" });
  assert.deepEqual(readdirSync(ca.dir).sort(), files);
  process.env.PATH = "/nonexistent";
  try {
    await assert.rejects(issueCertificate(ca, { role: "agent", name: "x" }), (err: unknown) => err instanceof VigilError && err.code === "VIGIL_HOST");
  } finally {
    process.env.PATH = path;
  }
  assert.deepEqual(readdirSync(ca.dir).sort(), files);
});

test("an explicit validity window makes an already expired certificate (openssl says so)", async () => {
  const old = await issueCertificate(ca, { role: "manager", name: "manager", notBefore: new Date("2020-01-01T00:00:00Z"), notAfter: new Date("2020-01-02T00:00:00Z") });
  const cert = new X509Certificate(old.certPem);
  assert.equal(Date.parse(cert.validTo), Date.parse("2020-01-02T00:00:00Z"));
  const v = verify(ca.certPem, old.certPem);
  assert.equal(v.ok, false);
  assert.match(v.out, /expired/);
});

test("bad input is refused naming the field, before openssl runs", async () => {
  await assert.rejects(issueCertificate(ca, { role: "agent", name: "a/OU=manager" }), rejectsWith("name"));
  await assert.rejects(issueCertificate(ca, { role: "agent", name: "" }), rejectsWith("name"));
  await assert.rejects(issueCertificate(ca, { role: "root" as "agent", name: "a" }), rejectsWith("role"));
  await assert.rejects(issueCertificate(ca, { role: "agent", name: "a", ips: ["10.0.0.300"] }), rejectsWith("ips"));
  await assert.rejects(issueCertificate(ca, { role: "agent", name: "a", dnsNames: ["a,IP:1.2.3.4"] }), rejectsWith("dnsNames"));
  await assert.rejects(issueCertificate(ca, { role: "agent", name: "a", days: 0 }), rejectsWith("days"));
  await assert.rejects(issueCertificate(ca, { role: "agent", name: "a", days: 3651 }), rejectsWith("days"));
  await assert.rejects(issueCertificate(ca, { role: "agent", name: "a", days: 1, notBefore: new Date(), notAfter: new Date() }), rejectsWith("days"));
  await assert.rejects(issueCertificate(ca, { role: "agent", name: "a", notBefore: new Date(2), notAfter: new Date(1) }), rejectsWith("notAfter"));
  await assert.rejects(issueCertificate(ca, { role: "migration", name: "m" }), rejectsWith("usage"));
  await assert.rejects(issueCertificate(ca, { role: "manager", name: "m", usage: "server" }), rejectsWith("usage"));
  await assert.rejects(issueMigrationPair(ca, "Bad_Id"), rejectsWith("migrationId"));
});

test("a migration pair: client CN=<id>-src, server CN=<id>-dst with SAN DNS <id>.migration.vigil, one hour", async () => {
  const id = "7f3c2a10-5d4e-4b1a-9c8e-0123456789ab";
  const { src, dst } = await issueMigrationPair(ca, id);
  const s = new X509Certificate(src.certPem);
  const d = new X509Certificate(dst.certPem);
  assert.equal(s.subject, `O=vigil\nOU=migration\nCN=${id}-src`);
  assert.equal(d.subject, `O=vigil\nOU=migration\nCN=${id}-dst`);
  assert.equal(d.subjectAltName, `DNS:${id}.migration.vigil`);
  assert.equal(s.subjectAltName, undefined);
  assert.deepEqual(s.keyUsage, ["1.3.6.1.5.5.7.3.2"]);
  assert.deepEqual(d.keyUsage, ["1.3.6.1.5.5.7.3.1"]);
  for (const c of [s, d]) {
    const minutes = (Date.parse(c.validTo) - Date.now()) / 60_000;
    assert.ok(minutes > 58 && minutes <= 60, `valid ${minutes} more minutes`);
  }
  assert.equal(verify(ca.certPem, src.certPem, "sslclient").ok, true);
  assert.equal(verify(ca.certPem, src.certPem, "sslserver").ok, false);
  assert.equal(verify(ca.certPem, dst.certPem, "sslserver").ok, true);
  assert.equal(verify(ca.certPem, dst.certPem, "sslclient").ok, false);
});

test("subjectOf reads vigil subjects and refuses any other", async () => {
  assert.deepEqual(subjectOf((await issueCertificate(ca, { role: "agent", name: "h1" })).certPem), { role: "agent", name: "h1" });
  assert.throws(() => subjectOf(ca.certPem), (err: unknown) => err instanceof VigilError && /OU=ca/.test(err.message)); // the CA itself is no role
  const dir = mkdtempSync(join(root, "other-"));
  for (const subj of ["/CN=vigil", "/O=other/OU=agent/CN=a", "/O=vigil/OU=agent/OU=manager/CN=a", "/O=vigil/CN=a/OU=agent"]) {
    execFileSync("openssl", ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1", "-subj", subj, "-keyout", join(dir, "k.pem"), "-out", join(dir, "c.pem")], { stdio: "ignore" });
    assert.throws(() => subjectOf(readFileSync(join(dir, "c.pem"), "utf8")), (err: unknown) => err instanceof VigilError && err.code === "VIGIL_FORBIDDEN", subj);
  }
  assert.throws(() => subjectOf("not a certificate"), (err: unknown) => err instanceof VigilError && err.field === "certificate");
});

test("writeQemuCredsDir writes QEMU's file names, owned by the VM's uid, dir 0700 and files 0600", async () => {
  const { dst, src } = await issueMigrationPair(ca, "m-creds");
  const server = join(root, "creds-server");
  writeQemuCredsDir(server, dst, "server", 4242);
  assert.deepEqual(readdirSync(server).sort(), ["ca-cert.pem", "server-cert.pem", "server-key.pem"]);
  assert.equal(mode(server), 0o700);
  assert.equal(statSync(server).uid, 4242);
  for (const f of readdirSync(server)) {
    assert.equal(mode(join(server, f)), 0o600, f);
    assert.equal(statSync(join(server, f)).uid, 4242, f);
    assert.equal(statSync(join(server, f)).gid, 4242, f);
  }
  assert.equal(readFileSync(join(server, "server-key.pem"), "utf8"), dst.keyPem);
  const client = join(root, "creds-client");
  writeQemuCredsDir(client, src, "client", 4243);
  assert.deepEqual(readdirSync(client).sort(), ["ca-cert.pem", "client-cert.pem", "client-key.pem"]);
  // Rewriting replaces the files (a new migration's pair) without loosening anything.
  writeQemuCredsDir(client, dst, "client", 4243);
  assert.equal(readFileSync(join(client, "client-cert.pem"), "utf8"), dst.certPem);
  assert.equal(mode(join(client, "client-key.pem")), 0o600);
  assert.throws(() => writeQemuCredsDir(client, src, "both" as "client", 1), rejectsWith("endpoint"));
  assert.throws(() => writeQemuCredsDir(client, src, "client", -1), rejectsWith("uid"));
});
