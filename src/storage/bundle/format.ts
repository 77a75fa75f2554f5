/**
 * The `.vigil` bundle, version 1: a VM as one streamable file (docs/bundles.md has the full description).
 *
 *   vigil-bundle.json   the manifest: format version, VM spec, snapshot tree, lineage, and for every file its
 *                       stored size and sha256 and its decompressed size and sha256
 *   vigil-bundle.sig    a detached Ed25519 signature over BUNDLE_SIGNATURE_CONTEXT, a NUL byte and the exact
 *                       manifest bytes, the signer's key id and the signature's version (2)
 *   files/NAME          each file the manifest lists, in its order: zstd-compressed qcow2 layers
 *
 * Everything in a bundle is hostile until proven otherwise: the manifest is parsed with a strict schema whose
 * every string, number and list is bounded, and the importer checks the signature before it reads any further.
 */
import { z } from "zod";
import { vmSpecSchema } from "../../vm/spec.ts";

export const MANIFEST_ENTRY = "vigil-bundle.json";
export const SIGNATURE_ENTRY = "vigil-bundle.sig";
export const MAX_MANIFEST_BYTES = 1024 * 1024;
export const MAX_SIGNATURE_BYTES = 8 * 1024;
export const MAX_FILES = 64;
/** 1 TiB per file: far above any disk vigil makes, far below what would overflow anything. */
export const MAX_FILE_BYTES = 2 ** 40;

const sha256 = z.string().regex(/^[0-9a-f]{64}$/, "must be a hex sha256");
const fileName = z.string().regex(/^[a-z0-9][a-z0-9._-]{0,63}$/, "must be a plain file name");
const shortText = z.string().max(500);

export const bundleFileSchema = z.strictObject({
  name: fileName,
  /** Which disk this layer belongs to and its place in the chain (0 = the bottom, the highest = the top). */
  disk: z.string().regex(/^[a-z][a-z0-9]{0,15}$/),
  layer: z.number().int().min(0).max(15),
  compression: z.literal("zstd"),
  size: z.number().int().min(0).max(MAX_FILE_BYTES),
  sha256,
  /** The decompressed size; the decompressor stops at it. Content is covered by `sha256` (of the stored bytes,
   * which determine the output) and by the checksum zstd keeps in every frame. */
  rawSize: z.number().int().min(0).max(MAX_FILE_BYTES),
});

export const bundleSnapshotSchema = z.strictObject({
  name: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/),
  parent: z.string().max(64).nullable(),
  kind: z.enum(["disk", "memory"]),
  description: shortText,
  createdBy: z.string().max(64),
  createdAt: z.string().max(40),
  generation: z.number().int().min(1).max(2 ** 31),
  vmStateSize: z.number().int().min(0).max(MAX_FILE_BYTES),
  stateSha256: sha256.nullable(),
  floor: z.record(z.string().max(64), z.string().max(128)),
  singleUse: z.boolean(),
  /** How often this saved state was resumed where it came from (absent in older bundles: 0). */
  resumedCount: z.number().int().min(0).max(2 ** 31).optional(),
});

export const manifestSchema = z.strictObject({
  format: z.literal("vigil-bundle"),
  version: z.literal(1),
  createdAt: z.string().max(40),
  site: z.strictObject({ keyId: z.string().regex(/^[0-9a-f]{16}$/), host: z.string().max(255) }),
  exportedBy: z.string().max(64),
  /** After this instant (ISO 8601) the bundle is refused. Optional; enforced when present. */
  expiresAt: z.iso.datetime({ offset: true }).optional(),
  vm: z.strictObject({
    id: z.string().max(64),
    name: z.string().max(64),
    spec: vmSpecSchema,
    owner: z.string().max(80),
    purpose: shortText.nullable(),
    labels: z.record(z.string().max(64), z.string().max(200)),
    generation: z.number().int().min(1).max(2 ** 31),
    lineage: z.record(z.string().max(64), z.unknown()),
    /** The VM's security floor: the import keeps it (absent in older bundles: none). */
    securityFloor: z.record(z.string().max(64), z.string().max(128)).optional(),
    /** The VM's firewall policy (checked by the firewall's own schema at import; absent in older bundles: the default). */
    firewall: z.unknown().optional(),
  }),
  snapshots: z.array(bundleSnapshotSchema).max(1000),
  /** A memory snapshot to resume from on the imported VM's first start (export --memory). */
  resume: z.string().max(64).nullable(),
  files: z.array(bundleFileSchema).min(1).max(MAX_FILES),
});

export type Manifest = z.output<typeof manifestSchema>;
export type BundleFile = z.output<typeof bundleFileSchema>;

/**
 * Domain separation: the site key also signs the audit log's tree heads (prefixed "vigil/audit/tree-head/v1\0"),
 * so what it signs for a bundle starts with this context and a NUL byte. Neither protocol's signature verifies as
 * the other's, whatever the signed JSON says, and neither verifies as a bare-JSON signature (what older vigils
 * signed, for bundles and for the pre-Merkle audit statements).
 */
export const BUNDLE_SIGNATURE_CONTEXT = "vigil/bundle/manifest/v1";
/** Version 1 (no `version` field) signed the bare manifest bytes: refused, see docs/bundles.md. */
export const BUNDLE_SIGNATURE_VERSION = 2;

/** The bytes a bundle signature covers: the context, NUL, then the manifest exactly as stored. */
export function bundleSignedBytes(manifestBytes: Buffer): Buffer {
  return Buffer.concat([Buffer.from(`${BUNDLE_SIGNATURE_CONTEXT}\0`), manifestBytes]);
}

/** The signature entry's content (vigil-bundle.sig) for a signature made over `bundleSignedBytes`. */
export function signatureEntry(keyId: string, signature: string): Buffer {
  return Buffer.from(JSON.stringify({ version: BUNDLE_SIGNATURE_VERSION, algorithm: "ed25519", keyId, signature }));
}

export const signatureSchema = z.strictObject({
  version: z.literal(BUNDLE_SIGNATURE_VERSION),
  algorithm: z.literal("ed25519"),
  keyId: z.string().regex(/^[0-9a-f]{16}$/),
  signature: z.string().regex(/^[A-Za-z0-9+/]{86}==$/, "must be a base64 Ed25519 signature"),
});
