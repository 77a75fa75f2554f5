/**
 * TLS for the TCP listener. Bearer tokens must not cross a network in clear, so a listener on anything but a
 * loopback address serves HTTPS, and one that would not is refused before anything starts. The certificate is
 * the operator's (`--tls-cert`/`--tls-key`) or, by default, a self-signed one vigil makes at first start with
 * `openssl` under $VIGIL_HOME/keys (key 0600). Clients pin it (`vigil login` stores its fingerprint), so it does
 * not need a CA; the daemon logs the fingerprint at every start so it can be compared out of band.
 */
import { X509Certificate } from "node:crypto";
import { execFileSync } from "node:child_process";
import { chmodSync, existsSync, readFileSync, renameSync, rmSync } from "node:fs";
import { isIP } from "node:net";
import { join } from "node:path";
import { createServer as createHttpsServer } from "node:https";
import { createAdaptorServer, type ServerType } from "@hono/node-server";
import { VigilError, messageOf, q } from "../errors.ts";

/** "auto": the site certificate (made on first use); "off": plain HTTP (loopback only); or the operator's files. */
export type TlsSetting = "auto" | "off" | { cert: string; key: string };

export interface TlsMaterial {
  cert: string;
  key: string;
  /** SHA-256 fingerprint as node and `vigil login` print it (AA:BB:…). */
  fingerprint: string;
}

/** 127.0.0.0/8, ::1 and "localhost": addresses no other machine can reach. */
export function isLoopback(host: string): boolean {
  if (host === "localhost" || host === "::1") return true;
  if (isIP(host) === 4) return host.startsWith("127.");
  return /^::ffff:127\./i.test(host);
}

/**
 * The TLS setting for a listener on `host`: as given, or "auto" off loopback and "off" on it. Refuses plain
 * HTTP on a non-loopback address (checked before the daemon creates anything).
 */
export function tlsSettingFor(host: string, setting: TlsSetting | undefined): TlsSetting {
  const chosen = setting ?? (isLoopback(host) ? "off" : "auto");
  if (chosen === "off" && !isLoopback(host)) {
    throw new VigilError("VIGIL_BAD_REQUEST", `Refusing to serve the API on ${q(host)} without TLS: tokens would cross the network in clear (plain HTTP is for loopback addresses only; drop --no-tls or give --tls-cert and --tls-key)`, { field: "listen" });
  }
  return chosen;
}

/** The certificate, key and fingerprint for `setting`, or undefined for plain HTTP. */
export function loadTls(chosen: TlsSetting, keysDir: string): TlsMaterial | undefined {
  if (chosen === "off") return undefined;
  const files = chosen === "auto" ? siteCertificate(keysDir) : chosen;
  let cert: string, key: string;
  try {
    cert = readFileSync(files.cert, "utf8");
    key = readFileSync(files.key, "utf8");
  } catch (err) {
    throw new VigilError("VIGIL_BAD_REQUEST", `Cannot read the TLS certificate or key: ${messageOf(err)}`, { field: "tls-cert", cause: err });
  }
  let fingerprint: string;
  try {
    fingerprint = new X509Certificate(cert).fingerprint256;
  } catch (err) {
    throw new VigilError("VIGIL_BAD_REQUEST", `Invalid TLS certificate ${q(files.cert)}: ${messageOf(err)}`, { field: "tls-cert", cause: err });
  }
  return { cert, key, fingerprint };
}

/**
 * The API's TCP listener (not yet listening): HTTPS with `tls`, plain HTTP without (`tlsSettingFor` allowed that on
 * loopback only). The single-host daemon and the cluster manager both serve through this, so their rules never drift.
 */
export function createApiServer(fetch: Parameters<typeof createAdaptorServer>[0]["fetch"], tls: TlsMaterial | undefined): ServerType {
  return tls ? createAdaptorServer({ fetch, createServer: createHttpsServer, serverOptions: { cert: tls.cert, key: tls.key } }) : createAdaptorServer({ fetch });
}

/** keys/tls-cert.pem and keys/tls-key.pem, made with openssl (P-256, 825 days) if they do not exist yet. */
function siteCertificate(keysDir: string): { cert: string; key: string } {
  const cert = join(keysDir, "tls-cert.pem");
  const key = join(keysDir, "tls-key.pem");
  if (existsSync(cert) && existsSync(key)) return { cert, key };
  const tmpKey = `${key}.tmp`;
  const tmpCert = `${cert}.tmp`;
  try {
    // keys/ is 0700, so the key is never readable by others, even before the chmod.
    execFileSync("openssl", ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "825", "-subj", "/CN=vigil", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", tmpKey, "-out", tmpCert], { stdio: ["ignore", "ignore", "pipe"], timeout: 30_000 });
    chmodSync(tmpKey, 0o600);
    renameSync(tmpKey, key);
    renameSync(tmpCert, cert);
  } catch (err) {
    rmSync(tmpKey, { force: true });
    rmSync(tmpCert, { force: true });
    const e = err as NodeJS.ErrnoException;
    throw new VigilError("VIGIL_HOST", e.code === "ENOENT" ? "Cannot make the site TLS certificate: `openssl` is not installed (or give --tls-cert and --tls-key)" : `Cannot make the site TLS certificate: ${messageOf(err)}`, { cause: err });
  }
  return { cert, key };
}
