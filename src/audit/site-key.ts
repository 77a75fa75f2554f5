/**
 * The site's Ed25519 key: generated at first start, private key 0600 in the private keys directory. It signs
 * audit checkpoints and exported bundles; its public half is what outside verifiers and other sites trust.
 */
import { createHash, createPrivateKey, createPublicKey, generateKeyPairSync, sign, type KeyObject } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, renameSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";

export interface SiteKey {
  privateKey: KeyObject;
  publicKey: KeyObject;
  /** First 16 hex digits of sha256 over the SPKI DER public key. */
  keyId: string;
  publicKeyPem: string;
  /** When the key was made (ISO time): the private key file's mtime, as vigil writes that file only once. */
  createdAt: string;
  sign(data: Buffer): string; // base64
}

export function keyIdOf(publicKey: KeyObject): string {
  return createHash("sha256").update(publicKey.export({ type: "spki", format: "der" })).digest("hex").slice(0, 16);
}

export function loadOrCreateSiteKey(keysDir: string): SiteKey {
  mkdirSync(keysDir, { recursive: true, mode: 0o700 });
  const privPath = join(keysDir, "site-ed25519.pem");
  const pubPath = join(keysDir, "site-ed25519.pub.pem");
  if (!existsSync(privPath)) {
    const { privateKey } = generateKeyPairSync("ed25519");
    const tmp = `${privPath}.tmp`;
    writeFileSync(tmp, privateKey.export({ type: "pkcs8", format: "pem" }), { mode: 0o600 });
    renameSync(tmp, privPath);
  }
  const privateKey = createPrivateKey(readFileSync(privPath));
  const publicKey = createPublicKey(privateKey);
  const publicKeyPem = publicKey.export({ type: "spki", format: "pem" }).toString();
  if (!existsSync(pubPath)) writeFileSync(pubPath, publicKeyPem, { mode: 0o644 });
  return {
    privateKey,
    publicKey,
    keyId: keyIdOf(publicKey),
    publicKeyPem,
    createdAt: statSync(privPath).mtime.toISOString(),
    sign: (data) => sign(null, data, privateKey).toString("base64"),
  };
}
