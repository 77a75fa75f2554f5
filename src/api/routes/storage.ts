/** Snapshot, template, clone, export/import and trust routes. */
import { VigilError } from "../../errors.ts";
import { createRoute, z } from "@hono/zod-openapi";
import { Readable } from "node:stream";
import { addTrustSchema } from "../../storage/trust.ts";
import { ownershipInputSchema } from "../../vm/spec.ts";
import { exportHeadersSchema, exportRequestSchema } from "../../storage/bundle/bundle-service.ts";
import type { ApiDeps, App } from "../context.ts";
import { body, json, optionalBody, reply, withAccess } from "../route-kit.ts";
import { VmNameParams, VmSchema } from "../schemas.ts";

const SnapshotParams = VmNameParams.extend({ snapshot: z.string().max(64).openapi({ param: { name: "snapshot", in: "path" } }) });

const SnapshotSchema = z
  .object({
    id: z.string(),
    vmId: z.string(),
    name: z.string(),
    parentId: z.string().nullable(),
    description: z.string(),
    kind: z.enum(["disk", "memory"]),
    generation: z.number(),
    vmgenid: z.string(),
    vmStateSize: z.number(),
    stateSha256: z.string().nullable(),
    diskBytes: z.number(),
    floor: z.record(z.string(), z.string()),
    guestFacts: z.record(z.string(), z.unknown()),
    singleUse: z.boolean(),
    resumedCount: z.number(),
    createdBy: z.string(),
    createdAt: z.string(),
  })
  .openapi("Snapshot");

const SnapshotNodeSchema = z
  .object({
    name: z.string(),
    parent: z.string().nullable(),
    kind: z.enum(["disk", "memory"]),
    description: z.string(),
    createdBy: z.string(),
    createdAt: z.string(),
    generation: z.number(),
    vmStateSize: z.number(),
    stateSha256: z.string().nullable(),
    diskBytes: z.number(),
    singleUse: z.boolean(),
    resumedCount: z.number(),
    current: z.boolean(),
  })
  .openapi("SnapshotNode");

const CreateSnapshotBody = z.strictObject({
  name: z.string().max(64),
  description: z.string().max(500).optional(),
  memory: z.boolean().default(false),
  singleUse: z.boolean().default(false),
});
const RevertBody = z.strictObject({
  force: z.boolean().default(false),
  reason: z.string().max(500).optional(),
  /** Admin-only demonstration of the unsafe case: resume with the snapshot's own vmgenid (no reseed). */
  unsafeKeepVmgenid: z.boolean().default(false),
});
const CloneBody = z.strictObject({
  name: z.string().max(64),
  mode: z.enum(["linked", "full"]).optional(),
  fromSnapshot: z.string().max(64).optional(),
  /** Default: the source's. */
  purpose: ownershipInputSchema.purpose,
  approver: ownershipInputSchema.approver,
  expiresAt: ownershipInputSchema.expiresAt,
  /** A clone from a snapshot below the source's security floor, like a revert to it, needs force and a reason. */
  force: z.boolean().default(false),
  reason: z.string().max(500).optional(),
});
const TemplateBody = z.strictObject({ undo: z.boolean().default(false) });
const ImportQuery = z.object({
  name: z.string().max(64).optional().openapi({ param: { name: "name", in: "query" } }),
  source: z.string().max(1024).optional().openapi({ param: { name: "source", in: "query" } }),
  /** Default: the purpose in the bundle. Approver and expiry are not taken from a bundle. */
  purpose: ownershipInputSchema.purpose,
  approver: ownershipInputSchema.approver,
  expiresAt: ownershipInputSchema.expiresAt,
  /** Import a bundle this site imported before (a replay, audited); refused without it. */
  allowReplay: z.enum(["true", "false"]).default("false").openapi({ param: { name: "allowReplay", in: "query" } }),
  /** The cluster manager's choice of host (it takes it off before passing the import on): refused by a host's daemon. */
  host: z.string().max(64).optional().openapi({ param: { name: "host", in: "query" } }),
});
const TrustedKeySchema = z.object({ keyId: z.string(), name: z.string(), publicKey: z.string(), addedBy: z.string(), addedAt: z.string(), site: z.boolean() }).openapi("TrustedKey");

export function registerStorageRoutes(app: App, d: ApiDeps): void {
  app.openapi(
    createRoute(withAccess("vm.modify", { method: "post", path: "/v1/vms/{name}/snapshots", tags: ["snapshots"], summary: "Take a snapshot (disk-only, or --memory for RAM and device state of a running VM)", request: { params: VmNameParams, ...body(CreateSnapshotBody) }, responses: { 201: json(SnapshotSchema, "The snapshot") } })),
    async (c) => reply(c, await d.snapshots.create(c.get("ctx"), c.req.valid("param").name, c.req.valid("json")), 201),
  );

  app.openapi(
    createRoute(withAccess("vm.read", { method: "get", path: "/v1/vms/{name}/snapshots", tags: ["snapshots"], summary: "The VM's snapshot tree", request: { params: VmNameParams }, responses: { 200: json(z.object({ vm: z.string(), current: z.string().nullable(), snapshots: z.array(SnapshotNodeSchema) }), "Snapshots, oldest first; parent names make the tree") } })),
    async (c) => reply(c, await d.snapshots.list(c.get("ctx"), c.req.valid("param").name)),
  );

  app.openapi(
    createRoute(withAccess("vm.modify", { method: "delete", path: "/v1/vms/{name}/snapshots/{snapshot}", tags: ["snapshots"], summary: "Delete a snapshot (its children move to its parent)", request: { params: SnapshotParams }, responses: { 200: json(z.object({ deleted: z.string() }), "Deleted") } })),
    async (c) => reply(c, await d.snapshots.delete(c.get("ctx"), c.req.valid("param").name, c.req.valid("param").snapshot)),
  );

  app.openapi(
    createRoute(withAccess("vm.modify", { method: "post", path: "/v1/vms/{name}/snapshots/{snapshot}/revert", tags: ["snapshots"], summary: "Revert to a snapshot: a fork with a new vmgenid in a fresh QEMU process", request: { params: SnapshotParams, ...optionalBody(RevertBody) }, responses: { 200: json(z.object({ vm: VmSchema, generation: z.number(), forced: z.boolean(), reapplied: z.record(z.string(), z.unknown()).optional() }), "The reverted VM") } })),
    async (c) => {
      const b = RevertBody.parse(c.req.valid("json") ?? {});
      return reply(c, await d.snapshots.revert(c.get("ctx"), c.req.valid("param").name, c.req.valid("param").snapshot, { force: b.force, reason: b.reason, unsafeKeepVmgenid: b.unsafeKeepVmgenid }));
    },
  );

  app.openapi(
    createRoute(withAccess("vm.modify", { method: "post", path: "/v1/vms/{name}/template", tags: ["templates"], summary: "Freeze a stopped VM as a read-only template (undo: thaw one without dependents)", request: { params: VmNameParams, ...optionalBody(TemplateBody) }, responses: { 200: json(VmSchema, "The template") } })),
    async (c) => reply(c, await d.clones.template(c.get("ctx"), c.req.valid("param").name, { undo: TemplateBody.parse(c.req.valid("json") ?? {}).undo })),
  );

  app.openapi(
    createRoute(withAccess("vm.export", { method: "post", path: "/v1/vms/{name}/clone", tags: ["templates"], summary: "Clone a VM: linked (overlay on a template) or full (independent copy), with fresh identity", request: { params: VmNameParams, ...body(CloneBody) }, responses: { 201: json(VmSchema, "The clone") } })),
    async (c) => {
      const b = c.req.valid("json");
      return reply(c, await d.clones.clone(c.get("ctx"), c.req.valid("param").name, b.name, { mode: b.mode, fromSnapshot: b.fromSnapshot, purpose: b.purpose, approver: b.approver, expiresAt: b.expiresAt, force: b.force, reason: b.reason }), 201);
    },
  );

  app.openapi(
    createRoute(withAccess("vm.export", { method: "post", path: "/v1/vms/{name}/export", tags: ["bundles"], summary: "Export the VM as one signed .vigil bundle (streamed back)", request: { params: VmNameParams, headers: exportHeadersSchema, ...optionalBody(exportRequestSchema) }, responses: { 200: { content: { "application/x-vigil-bundle": { schema: z.string() } }, description: "The bundle" } } })),
    async (c) => {
      const prepared = await d.bundles.prepareExport(c.get("ctx"), c.req.valid("param").name, c.req.valid("json") ?? {}, c.req.valid("header")["x-vigil-output"]);
      const stream = Readable.toWeb(Readable.from(prepared.chunks())) as ReadableStream<Uint8Array>;
      return c.body(stream, 200, { "content-type": "application/x-vigil-bundle", "content-length": String(prepared.totalBytes) }) as never;
    },
  );

  app.openapi(
    createRoute(withAccess("vm.create", { method: "post", path: "/v1/vms/import", tags: ["bundles"], summary: "Import a .vigil bundle (the request body); verified completely before anything is created", request: { query: ImportQuery, body: { content: { "application/x-vigil-bundle": { schema: z.string() } }, required: true } }, responses: { 201: json(VmSchema, "The imported VM") } })),
    async (c) => {
      const q = c.req.valid("query");
      if (q.host !== undefined) throw new VigilError("VIGIL_BAD_REQUEST", "host= picks the host on a cluster manager; this is one host's daemon, which imports onto itself", { field: "host" });
      const raw = c.req.raw.body;
      const source = q.source ?? "(uploaded)";
      const empty = (async function* () {})();
      return reply(c, await d.bundles.import(c.get("ctx"), raw ?? empty, { name: q.name, source, purpose: q.purpose, approver: q.approver, expiresAt: q.expiresAt, allowReplay: q.allowReplay === "true" }), 201);
    },
  );

  app.openapi(
    createRoute(withAccess("image.read", { method: "get", path: "/v1/trust", tags: ["bundles"], summary: "Keys whose bundles this site imports (the site's own first)", responses: { 200: json(z.object({ keys: z.array(TrustedKeySchema) }), "Trusted keys") } })),
    async (c) => reply(c, { keys: await d.trust.list(c.get("ctx")) }),
  );

  app.openapi(
    createRoute(withAccess("trust.manage", { method: "post", path: "/v1/trust", tags: ["bundles"], summary: "Trust another site's bundle-signing key", request: body(addTrustSchema), responses: { 201: json(TrustedKeySchema, "The trusted key") } })),
    async (c) => reply(c, await d.trust.add(c.get("ctx"), c.req.valid("json")), 201),
  );

  app.openapi(
    createRoute(withAccess("trust.manage", { method: "delete", path: "/v1/trust/{keyId}", tags: ["bundles"], summary: "Stop trusting a key", request: { params: z.object({ keyId: z.string().max(64).openapi({ param: { name: "keyId", in: "path" } }) }) }, responses: { 200: json(z.object({ removed: z.string() }), "Removed") } })),
    async (c) => reply(c, await d.trust.remove(c.get("ctx"), c.req.valid("param").keyId)),
  );
}
