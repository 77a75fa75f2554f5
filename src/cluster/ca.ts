/**
 * The vigil CA (docs/cluster.md, "Certificates and mutual TLS"): a P-256 key and a self-signed certificate that
 * sign every certificate the cluster trusts — the manager's client certificate, each agent's certificate and the
 * ephemeral pair of each live migration. Subjects are `O=vigil, OU=<role>, CN=<name>`; the role is what a peer is
 * allowed to do, so names are checked strictly before anything reaches openssl.
 *
 * openssl does the cryptography, as `daemon/tls.ts` already has it do: every key, request and configuration is a
 * file in a private (0700) scratch directory inside the CA's own directory, removed on every path, and no key or
 * passphrase is ever on a command line. The CA key stays in its 0700 directory on the manager; nothing here sends it anywhere.
 */
import { X509Certificate, createPrivateKey } from "node:crypto";
import { chmodSync, chownSync, existsSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { isIP } from "node:net";
import { join } from "node:path";
import { VigilError, messageOf, q } from "../errors.ts";
import { runCommand } from "../util/run-command.ts";
import type { CertBundle, CertRole } from "./types.ts";

/** The files of a CA directory (`$VIGIL_HOME/keys/ca`). */
export const CA_FILES = {
  caCert: "ca-cert.pem",
  caKey: "ca-key.pem",
  managerCert: "manager-cert.pem",
  managerKey: "manager-key.pem",
} as const;

/** Where a home's CA lives: `keys/ca` below its keys directory (`homeLayout(home).keysDir`). */
export function caDir(keysDir: string): string {
  return join(keysDir, "ca");
}

/** A loaded CA: its certificate and key, and the manager's client certificate it issued. */
export interface Ca {
  dir: string;
  certPem: string;
  keyPem: string;
  /** SHA-256 fingerprint of the CA certificate (AA:BB:…). */
  fingerprint: string;
  /** The manager's client certificate (`OU=manager, CN=manager`). */
  manager: CertBundle;
}

export interface IssueRequest {
  role: CertRole;
  name: string;
  /** IP addresses for the subjectAltName (an agent's cluster address). */
  ips?: string[];
  dnsNames?: string[];
  /** Validity from now (default 365). Exclusive with notBefore/notAfter. */
  days?: number;
  /** An explicit validity window (tests use one already over to make an expired certificate). */
  notBefore?: Date;
  notAfter?: Date;
  /**
   * What the certificate may authenticate. Default by role: agent both (it serves the manager and may call a
   * peer), manager client, migration must say.
   */
  usage?: "server" | "client" | "both";
}

const ROLES: readonly CertRole[] = ["manager", "agent", "migration"];
/** Names go into a subject line (`/O=vigil/OU=…/CN=…`): only characters that need no escaping there. */
const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
const DNS_LABEL = "[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?";
const DNS_RE = new RegExp(`^${DNS_LABEL}(?:\\.${DNS_LABEL})*$`);
/** A migration id becomes a DNS label (`<id>.migration.vigil`) and the CNs `<id>-src`/`<id>-dst`. */
const MIGRATION_ID_RE = /^[a-z0-9](?:[a-z0-9-]{0,56}[a-z0-9])?$/;
const MAX_DAYS = 3650;
/** Issued certificates start a little in the past so a host whose clock is slightly behind accepts them. */
const BACKDATE_MS = 5 * 60_000;
const MIGRATION_VALIDITY_MS = 60 * 60_000;
const OPENSSL_TIMEOUT_MS = 30_000;

/**
 * Makes the CA in `dir` (created 0700): key (0600) and self-signed certificate (`O=vigil, OU=ca, CN=vigil CA`,
 * 10 years) and the manager's client certificate and key (0600). Refuses when a CA is already there unless
 * `force` (which replaces it: every certificate the old one issued stops being trusted). Everything is made in a
 * staging directory first, so a failure leaves the directory as it was (or absent, if this call created it).
 */
export async function initCa(dir: string, options: { force?: boolean } = {}): Promise<Ca> {
  const present = Object.values(CA_FILES).filter((f) => existsSync(join(dir, f)));
  if (present.length > 0 && !options.force) {
    throw new VigilError("VIGIL_CONFLICT", `Cannot make the vigil CA in ${q(dir)}: one is already there (${present.join(", ")}); give --force to replace it (every certificate it issued stops being trusted)`, { field: "force" });
  }
  const created = !existsSync(dir);
  let staging: string | undefined;
  try {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    if (!lstatSync(dir).isDirectory()) throw new VigilError("VIGIL_BAD_REQUEST", `Cannot make the vigil CA in ${q(dir)}: it is not a directory`, { field: "dir" });
    chmodSync(dir, 0o700);
    // The staging directory is inside `dir` so the final renames never cross a file system.
    staging = mkdtempSync(join(dir, ".staging-"));
    const now = Date.now();
    const caKeyPem = await withTemp(staging, async (tmp) => {
      await genKey(tmp, "ca-key.pem");
      return readFileSync(join(tmp, "ca-key.pem"), "utf8");
    });
    const caCertPem = await withTemp(staging, async (tmp) => {
      writeFileSync(join(tmp, "ca-key.pem"), caKeyPem, { mode: 0o600 });
      const ext = ["basicConstraints = critical,CA:TRUE,pathlen:0", "keyUsage = critical,keyCertSign,cRLSign", "subjectKeyIdentifier = hash"];
      return sign(tmp, { subject: "/O=vigil/OU=ca/CN=vigil CA", keyFile: "ca-key.pem", ext, notBefore: new Date(now - BACKDATE_MS), notAfter: yearsAfter(now, 10), selfSign: true });
    });
    const ca: Ca = { dir, certPem: caCertPem, keyPem: caKeyPem, fingerprint: fingerprintOf(caCertPem), manager: { caPem: caCertPem, certPem: "", keyPem: "" } };
    ca.manager = await issueCertificate(ca, { role: "manager", name: "manager", days: 825 });
    const files: [string, string, number][] = [
      [CA_FILES.caKey, caKeyPem, 0o600],
      [CA_FILES.caCert, caCertPem, 0o644],
      [CA_FILES.managerKey, ca.manager.keyPem, 0o600],
      [CA_FILES.managerCert, ca.manager.certPem, 0o644],
    ];
    for (const [name, text, mode] of files) {
      writeFileSync(join(staging, name), text, { mode });
      chmodSync(join(staging, name), mode);
    }
    // One rename per file (four files cannot be replaced at once): a crash in between leaves a mix that loadCa
    // refuses as damaged, never one it uses.
    for (const [name] of files) renameSync(join(staging, name), join(dir, name));
    return ca;
  } catch (err) {
    if (created) rmSync(dir, { recursive: true, force: true });
    throw err instanceof VigilError ? err : new VigilError("VIGIL_HOST", `Cannot make the vigil CA in ${q(dir)}: ${messageOf(err)}`, { cause: err });
  } finally {
    if (staging && existsSync(staging)) rmSync(staging, { recursive: true, force: true });
  }
}

/** Loads the CA that initCa made in `dir`; VIGIL_NOT_FOUND when there is none, VIGIL_HOST when it is damaged. */
export function loadCa(dir: string): Ca {
  if (!existsSync(join(dir, CA_FILES.caCert))) {
    throw new VigilError("VIGIL_NOT_FOUND", `There is no vigil CA in ${q(dir)} (make one with \`vigil ca init\`)`);
  }
  const read = (name: string) => {
    try {
      return readFileSync(join(dir, name), "utf8");
    } catch (err) {
      throw new VigilError("VIGIL_HOST", `Cannot read the vigil CA's ${name} in ${q(dir)}: ${messageOf(err)}`, { cause: err });
    }
  };
  const certPem = read(CA_FILES.caCert);
  const keyPem = read(CA_FILES.caKey);
  const manager = { caPem: certPem, certPem: read(CA_FILES.managerCert), keyPem: read(CA_FILES.managerKey) };
  let cert: X509Certificate;
  try {
    cert = new X509Certificate(certPem);
  } catch (err) {
    throw new VigilError("VIGIL_HOST", `The vigil CA certificate in ${q(dir)} is damaged: ${messageOf(err)}`, { cause: err });
  }
  if (!cert.ca || cert.subject !== "O=vigil\nOU=ca\nCN=vigil CA") {
    throw new VigilError("VIGIL_HOST", `${q(join(dir, CA_FILES.caCert))} is not a vigil CA certificate (its subject is ${q(cert.subject.replace(/\n/g, ", "))})`);
  }
  // The four files belong together: a key that is not the certificate's (a torn `init --force`, a file copied
  // from elsewhere) would sign certificates nobody trusts, so it is refused here rather than found out later.
  const damaged = (what: string, err?: unknown) => new VigilError("VIGIL_HOST", `The vigil CA in ${q(dir)} is damaged: ${what} (make a new one with \`vigil ca init --force\`)`, { cause: err });
  let managerCert: X509Certificate;
  try {
    if (!cert.checkPrivateKey(createPrivateKey(keyPem))) throw damaged(`${CA_FILES.caKey} is not the key of ${CA_FILES.caCert}`);
    managerCert = new X509Certificate(manager.certPem);
    if (!managerCert.checkPrivateKey(createPrivateKey(manager.keyPem))) throw damaged(`${CA_FILES.managerKey} is not the key of ${CA_FILES.managerCert}`);
  } catch (err) {
    throw err instanceof VigilError ? err : damaged(messageOf(err), err);
  }
  if (!managerCert.checkIssued(cert) || !managerCert.verify(cert.publicKey)) throw damaged(`${CA_FILES.managerCert} was not issued by this CA`);
  return { dir, certPem, keyPem, fingerprint: cert.fingerprint256, manager };
}

/**
 * Issues a certificate for `role`/`name` signed by the CA: a fresh P-256 key, a random serial, the key usages its
 * role needs (serverAuth for what serves, clientAuth for what connects), the given SANs. Input is checked first
 * (field named in the error); nothing is written outside a temporary directory that is removed afterwards.
 */
export async function issueCertificate(ca: Ca, req: IssueRequest): Promise<CertBundle> {
  if (!ROLES.includes(req.role)) throw new VigilError("VIGIL_BAD_REQUEST", `Invalid certificate role ${q(req.role)}: must be manager, agent or migration`, { field: "role" });
  if (!NAME_RE.test(req.name)) {
    throw new VigilError("VIGIL_BAD_REQUEST", `Invalid certificate name ${q(req.name)}: use 1-64 letters, digits, ".", "_" or "-", starting with a letter or digit`, { field: "name" });
  }
  for (const ip of req.ips ?? []) if (isIP(ip) === 0) throw new VigilError("VIGIL_BAD_REQUEST", `Invalid IP address ${q(ip)} for the certificate of ${q(req.name)}`, { field: "ips" });
  for (const dns of req.dnsNames ?? []) {
    if (dns.length > 253 || !DNS_RE.test(dns)) throw new VigilError("VIGIL_BAD_REQUEST", `Invalid DNS name ${q(dns)} for the certificate of ${q(req.name)}: lower-case labels of letters, digits and "-"`, { field: "dnsNames" });
  }
  const { notBefore, notAfter } = validity(req);
  const usage = req.usage ?? (req.role === "agent" ? "both" : req.role === "manager" ? "client" : undefined);
  if (usage === undefined) throw new VigilError("VIGIL_BAD_REQUEST", "A migration certificate must say whether it is the server's or the client's", { field: "usage" });
  if (req.role === "manager" && usage !== "client") throw new VigilError("VIGIL_BAD_REQUEST", "A manager certificate is a client certificate only", { field: "usage" });
  const eku = usage === "server" ? "serverAuth" : usage === "client" ? "clientAuth" : "serverAuth,clientAuth";
  const san = [...(req.ips ?? []).map((ip) => `IP:${ip}`), ...(req.dnsNames ?? []).map((d) => `DNS:${d}`)];
  const ext = [
    "basicConstraints = critical,CA:FALSE",
    // Not critical: QEMU's sanity check insists on keyEncipherment when keyUsage is critical, which an EC key must
    // not have (RFC 5480). Both OpenSSL and GnuTLS still enforce digitalSignature for the handshake.
    "keyUsage = digitalSignature",
    // Critical, so QEMU's check enforces it too: a migration's server certificate cannot act as its client.
    `extendedKeyUsage = critical,${eku}`,
    "subjectKeyIdentifier = hash",
    "authorityKeyIdentifier = keyid",
    ...(san.length > 0 ? [`subjectAltName = ${san.join(",")}`] : []),
  ];
  // The scratch directory is inside the CA's own 0700 directory: the copy of the CA key openssl reads never
  // lands anywhere the key itself is not (not even after a crash between writing and removing it).
  return withTemp(ca.dir, async (tmp) => {
    writeFileSync(join(tmp, "ca-key.pem"), ca.keyPem, { mode: 0o600 });
    writeFileSync(join(tmp, "ca-cert.pem"), ca.certPem);
    await genKey(tmp, "key.pem");
    const certPem = await sign(tmp, { subject: `/O=vigil/OU=${req.role}/CN=${req.name}`, keyFile: "key.pem", ext, notBefore, notAfter, selfSign: false });
    return { caPem: ca.certPem, certPem, keyPem: readFileSync(join(tmp, "key.pem"), "utf8") };
  });
}

/**
 * The two ephemeral certificates of one migration, valid one hour: `src` is the source QEMU's client certificate
 * (`CN=<id>-src`), `dst` the target QEMU's server certificate (`CN=<id>-dst`, SAN DNS `<id>.migration.vigil`, the
 * tls-hostname the source checks).
 */
export async function issueMigrationPair(ca: Ca, migrationId: string): Promise<{ src: CertBundle; dst: CertBundle }> {
  if (!MIGRATION_ID_RE.test(migrationId)) {
    throw new VigilError("VIGIL_BAD_REQUEST", `Invalid migration id ${q(migrationId)}: lower-case letters, digits and "-" (at most 58), as a DNS label`, { field: "migrationId" });
  }
  const now = Date.now();
  const window = { notBefore: new Date(now - BACKDATE_MS), notAfter: new Date(now + MIGRATION_VALIDITY_MS) };
  const src = await issueCertificate(ca, { role: "migration", name: `${migrationId}-src`, usage: "client", ...window });
  const dst = await issueCertificate(ca, { role: "migration", name: `${migrationId}-dst`, usage: "server", dnsNames: [migrationHostname(migrationId)], ...window });
  return { src, dst };
}

/** The name the source QEMU checks the target's certificate against (its `tls-hostname`). */
export function migrationHostname(migrationId: string): string {
  return `${migrationId}.migration.vigil`;
}

/**
 * Writes `bundle` as QEMU's tls-creds-x509 reads a directory: `ca-cert.pem` and `server-cert.pem`/`server-key.pem`
 * (endpoint server) or `client-cert.pem`/`client-key.pem` (endpoint client). The directory is 0700 and the files
 * 0600, all owned by `uid` (the VM's jail uid, group the same), so only that QEMU can read the key.
 */
export function writeQemuCredsDir(dir: string, bundle: CertBundle, endpoint: "server" | "client", uid: number): void {
  if (endpoint !== "server" && endpoint !== "client") throw new VigilError("VIGIL_BAD_REQUEST", `Invalid TLS endpoint ${q(endpoint)}: must be server or client`, { field: "endpoint" });
  if (!Number.isInteger(uid) || uid < 0) throw new VigilError("VIGIL_BAD_REQUEST", `Invalid uid ${q(uid)} for the TLS credentials: a whole number`, { field: "uid" });
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  chmodSync(dir, 0o700);
  const files: [string, string][] = [
    ["ca-cert.pem", bundle.caPem],
    [`${endpoint}-cert.pem`, bundle.certPem],
    [`${endpoint}-key.pem`, bundle.keyPem],
  ];
  for (const [name, text] of files) {
    const path = join(dir, name);
    // Written under a temporary name and renamed, so a reader never sees half a file and an old file's mode
    // (or a symlink planted there) never carries over.
    const tmp = `${path}.tmp`;
    rmSync(tmp, { force: true });
    writeFileSync(tmp, text, { mode: 0o600, flag: "wx" });
    chmodSync(tmp, 0o600);
    chownSync(tmp, uid, uid);
    renameSync(tmp, path);
  }
  chownSync(dir, uid, uid);
}

/** What a vigil certificate's subject says: `O=vigil, OU=<role>, CN=<name>`; anything else is refused. */
export function subjectOf(pem: string | X509Certificate): { role: CertRole; name: string } {
  let cert: X509Certificate;
  try {
    cert = typeof pem === "string" ? new X509Certificate(pem) : pem;
  } catch (err) {
    throw new VigilError("VIGIL_BAD_REQUEST", `Not a certificate: ${messageOf(err)}`, { field: "certificate", cause: err });
  }
  const parts = cert.subject.split("\n").map((line) => {
    const i = line.indexOf("=");
    return [line.slice(0, i), line.slice(i + 1)] as const;
  });
  const keys = parts.map(([k]) => k).join(",");
  const get = (k: string) => parts.find(([key]) => key === k)?.[1];
  const role = get("OU") as CertRole | undefined;
  const name = get("CN");
  // Exactly O, OU, CN once each, in that order: a subject with repeated attributes could say two things at once.
  if (keys !== "O,OU,CN" || get("O") !== "vigil" || role === undefined || !ROLES.includes(role) || name === undefined || name === "") {
    throw new VigilError("VIGIL_FORBIDDEN", `Not a vigil certificate: its subject is ${q(cert.subject.replace(/\n/g, ", "))} (expected O=vigil, OU=manager|agent|migration, CN=<name>)`, { field: "certificate" });
  }
  return { role, name };
}

/**
 * The identity QEMU checks against an `authz-simple` object for a TLS peer: the subject's distinguished name as
 * GnuTLS prints it, in the certificate's order (`O=vigil,OU=migration,CN=<id>-src`), not RFC 4514's reversed one.
 */
export function qemuTlsIdentity(pem: string): string {
  const { role, name } = subjectOf(pem);
  return `O=vigil,OU=${role},CN=${name}`;
}

/** SHA-256 fingerprint of a PEM certificate, as node prints it (AA:BB:…). */
export function fingerprintOf(pem: string): string {
  return new X509Certificate(pem).fingerprint256;
}

function yearsAfter(ms: number, years: number): Date {
  const d = new Date(ms);
  d.setUTCFullYear(d.getUTCFullYear() + years);
  return d;
}

function validity(req: IssueRequest): { notBefore: Date; notAfter: Date } {
  const explicit = req.notBefore !== undefined || req.notAfter !== undefined;
  if (explicit && req.days !== undefined) throw new VigilError("VIGIL_BAD_REQUEST", "Give either days or notBefore/notAfter, not both", { field: "days" });
  if (explicit) {
    if (!req.notBefore || !req.notAfter || Number.isNaN(req.notBefore.getTime()) || Number.isNaN(req.notAfter.getTime())) {
      throw new VigilError("VIGIL_BAD_REQUEST", "Give both notBefore and notAfter as valid dates", { field: req.notBefore ? "notAfter" : "notBefore" });
    }
    if (req.notAfter.getTime() <= req.notBefore.getTime()) throw new VigilError("VIGIL_BAD_REQUEST", "notAfter must be after notBefore", { field: "notAfter" });
    return { notBefore: req.notBefore, notAfter: req.notAfter };
  }
  const days = req.days ?? 365;
  if (!Number.isInteger(days) || days < 1 || days > MAX_DAYS) throw new VigilError("VIGIL_BAD_REQUEST", `Invalid days ${q(days)}: a whole number from 1 to ${MAX_DAYS}`, { field: "days" });
  const now = Date.now();
  return { notBefore: new Date(now - BACKDATE_MS), notAfter: new Date(now + days * 86_400_000) };
}

/** Runs `work` in a fresh 0700 scratch directory below `parent` that is removed afterwards, whatever happens. */
async function withTemp<T>(parent: string, work: (dir: string) => Promise<T>): Promise<T> {
  let dir: string;
  try {
    dir = mkdtempSync(join(parent, ".scratch-"));
  } catch (err) {
    throw new VigilError("VIGIL_HOST", `Cannot use the CA directory ${q(parent)}: ${messageOf(err)}`, { cause: err });
  }
  try {
    return await work(dir);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

async function openssl(args: string[], what: string): Promise<void> {
  await runCommand("openssl", args, { timeoutMs: OPENSSL_TIMEOUT_MS, what: `openssl (${what})` });
}

async function genKey(tmp: string, name: string): Promise<void> {
  await openssl(["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", join(tmp, name)], "making a key");
  chmodSync(join(tmp, name), 0o600);
}

/** openssl's certificate time: YYYYMMDDHHMMSSZ. */
function asn1Time(d: Date): string {
  return d.toISOString().replace(/[-:T]/g, "").replace(/\.\d+Z$/, "Z");
}

/**
 * Makes a request for `keyFile` with `subject` and signs it with `openssl ca` (the only openssl 3.0 command that
 * takes an explicit validity window) under a configuration written here: random serial, no copied extensions, the
 * subject kept as given. In `tmp`: the CA's key and certificate (unless self-signing), the key.
 */
async function sign(tmp: string, o: { subject: string; keyFile: string; ext: string[]; notBefore: Date; notAfter: Date; selfSign: boolean }): Promise<string> {
  const config = [
    "[ca]",
    "default_ca = vigil",
    "[vigil]",
    `database = ${join(tmp, "index.txt")}`,
    `new_certs_dir = ${tmp}`,
    "default_md = sha256",
    "policy = policy_any",
    "unique_subject = no",
    "rand_serial = yes",
    "email_in_dn = no",
    "copy_extensions = none",
    "[policy_any]",
    "commonName = supplied",
    "[ext]",
    ...o.ext,
    "[req]",
    "distinguished_name = dn",
    "[dn]",
    "",
  ].join("\n");
  writeFileSync(join(tmp, "openssl.cnf"), config, { mode: 0o600 });
  writeFileSync(join(tmp, "index.txt"), "");
  const cnf = join(tmp, "openssl.cnf");
  const csr = join(tmp, "req.pem");
  const out = join(tmp, "cert.pem");
  await openssl(["req", "-new", "-config", cnf, "-key", join(tmp, o.keyFile), "-subj", o.subject, "-out", csr], "making a certificate request");
  const signer = o.selfSign ? ["-selfsign", "-keyfile", join(tmp, o.keyFile)] : ["-cert", join(tmp, "ca-cert.pem"), "-keyfile", join(tmp, "ca-key.pem")];
  await openssl(["ca", "-config", cnf, ...signer, "-in", csr, "-out", out, "-batch", "-notext", "-preserveDN", "-extensions", "ext", "-startdate", asn1Time(o.notBefore), "-enddate", asn1Time(o.notAfter)], "signing a certificate");
  return readFileSync(out, "utf8");
}
