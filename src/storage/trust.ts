/**
 * Trusted signers of bundles. The site's own key is trusted from the start; other sites' public keys are added
 * by an admin (`vigil trust add KEY.pem`). Import verifies a bundle's signature against this list before it
 * reads anything but the manifest.
 */
import { createPublicKey, verify, type KeyObject } from "node:crypto";
import { z } from "zod";
import type { Db } from "../inventory/db.ts";
import type { Guard, RequestContext } from "../auth/guard.ts";
import { keyIdOf, type SiteKey } from "../audit/site-key.ts";
import { VigilError, q } from "../errors.ts";
import { parseOrThrow } from "../validation.ts";

export const addTrustSchema = z.strictObject({
  name: z.string().regex(/^[A-Za-z0-9 ._-]{1,64}$/, "must be 1-64 letters, digits, spaces and ._-"),
  publicKey: z.string().max(4096).regex(/^-----BEGIN PUBLIC KEY-----[\sA-Za-z0-9+/=]+-----END PUBLIC KEY-----\s*$/, "must be a PEM public key"),
});

export interface TrustedKey {
  keyId: string;
  name: string;
  publicKey: string;
  addedBy: string;
  addedAt: string;
  site: boolean;
}

export class TrustStore {
  constructor(
    private readonly db: Db,
    private readonly site: SiteKey,
    private readonly guard: Guard,
  ) {}

  private siteEntry(): TrustedKey {
    return { keyId: this.site.keyId, name: "this site", publicKey: this.site.publicKeyPem, addedBy: "system", addedAt: this.site.createdAt, site: true };
  }

  async list(ctx: RequestContext): Promise<TrustedKey[]> {
    await this.guard.authorize(ctx, { action: "trust.list", permission: "image.read", target: { kind: "trust" }, readOnly: true });
    const rows = await this.db.selectFrom("trusted_keys").selectAll().orderBy("name").execute();
    return [this.siteEntry(), ...rows.map((r) => ({ keyId: r.key_id, name: r.name, publicKey: r.public_key, addedBy: r.added_by, addedAt: r.added_at, site: false }))];
  }

  async add(ctx: RequestContext, input: unknown): Promise<TrustedKey> {
    return this.guard.run(ctx, { action: "trust.add", permission: "trust.manage", target: { kind: "trust" } }, async () => {
      const req = parseOrThrow(addTrustSchema, input, "trusted key");
      let key: KeyObject;
      try {
        key = createPublicKey(req.publicKey);
      } catch {
        throw new VigilError("VIGIL_BAD_REQUEST", "Invalid trusted key: not a readable public key", { field: "publicKey" });
      }
      if (key.asymmetricKeyType !== "ed25519") throw new VigilError("VIGIL_BAD_REQUEST", `Invalid trusted key: it is ${key.asymmetricKeyType}, bundles are signed with ed25519`, { field: "publicKey" });
      const keyId = keyIdOf(key);
      if (keyId === this.site.keyId) throw new VigilError("VIGIL_CONFLICT", "That is this site's own key: it is trusted already", { field: "publicKey" });
      const pem = key.export({ type: "spki", format: "pem" }).toString();
      const entry = { key_id: keyId, public_key: pem, name: req.name, added_by: ctx.actor.name, added_at: new Date().toISOString() };
      // Adding a key twice is refused, not a silent rename: a change to what this site trusts is always explicit.
      const res = await this.db.insertInto("trusted_keys").values(entry).onConflict((oc) => oc.column("key_id").doNothing()).executeTakeFirst();
      if (Number(res.numInsertedOrUpdatedRows ?? 0n) === 0) {
        const existing = await this.db.selectFrom("trusted_keys").select(["name", "added_by", "added_at"]).where("key_id", "=", keyId).executeTakeFirst();
        const how = existing ? `as ${q(existing.name)} (added by ${existing.added_by} at ${existing.added_at})` : "already";
        throw new VigilError("VIGIL_CONFLICT", `Key ${q(keyId)} is already trusted ${how}; to rename it, remove it and add it again`, { field: "publicKey" });
      }
      return { keyId, name: req.name, publicKey: pem, addedBy: entry.added_by, addedAt: entry.added_at, site: false };
    }, (k) => ({ keyId: k.keyId, name: k.name }));
  }

  async remove(ctx: RequestContext, keyId: string): Promise<{ removed: string }> {
    return this.guard.run(ctx, { action: "trust.remove", permission: "trust.manage", target: { kind: "trust", name: keyId } }, async () => {
      if (keyId === this.site.keyId) throw new VigilError("VIGIL_INVALID_STATE", `The site's own key ${q(keyId)} cannot be removed: it signs this site's bundles`);
      const res = await this.db.deleteFrom("trusted_keys").where("key_id", "=", keyId).executeTakeFirst();
      if (Number(res.numDeletedRows) === 0) throw new VigilError("VIGIL_NOT_FOUND", `No trusted key with id ${q(keyId)}`);
      return { removed: keyId };
    });
  }

  /** Verifies `signature` over `data` by the key `keyId`; returns the signer or throws naming the problem. */
  async verify(data: Buffer, keyId: string, signature: string): Promise<{ keyId: string; name: string }> {
    let pem: string | undefined;
    let name = "this site";
    if (keyId === this.site.keyId) pem = this.site.publicKeyPem;
    else {
      const row = await this.db.selectFrom("trusted_keys").selectAll().where("key_id", "=", keyId).executeTakeFirst();
      if (row) {
        pem = row.public_key;
        name = row.name;
      }
    }
    if (!pem) throw new VigilError("VIGIL_POLICY_DENIED", `Cannot import: the bundle is signed by key ${q(keyId)}, which this site does not trust (vigil trust add KEY.pem)`);
    const ok = verify(null, data, createPublicKey(pem), Buffer.from(signature, "base64"));
    if (!ok) throw new VigilError("VIGIL_BAD_REQUEST", `Invalid bundle: the manifest's signature does not verify with key ${q(keyId)} (the manifest was changed)`);
    return { keyId, name };
  }
}
