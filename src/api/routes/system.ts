/** Health, host facts, images, the audit log and the live events stream. */
import { createRoute, z } from "@hono/zod-openapi";
import { streamSSE } from "hono/streaming";
import type { ApiDeps, App } from "../context.ts";
import { serveEvents } from "../event-stream.ts";
import { json, reply, withAccess } from "../route-kit.ts";
import { AuditRecordSchema, ImageSchema } from "../schemas.ts";
import { can } from "../../auth/permissions.ts";

const AuditQuery = z.object({
  after: z.coerce.number().int().min(0).optional().openapi({ param: { name: "after", in: "query" } }),
  limit: z.coerce.number().int().min(1).max(10_000).default(100).openapi({ param: { name: "limit", in: "query" } }),
  tail: z.enum(["true", "false"]).default("false").openapi({ param: { name: "tail", in: "query" } }),
});

const ImportImageQuery = z.object({
  name: z.string().max(64).openapi({ param: { name: "name", in: "query" } }),
  format: z.enum(["qcow2", "raw"]).openapi({ param: { name: "format", in: "query" } }),
  description: z.string().max(500).optional().openapi({ param: { name: "description", in: "query" } }),
  source: z.string().max(1024).optional().openapi({ param: { name: "source", in: "query" } }),
});

const EventsQuery = z.strictObject({
  progress: z.string().regex(/^[A-Za-z0-9._-]{1,64}$/).optional().openapi({ param: { name: "progress", in: "query" } }),
});

const VerifySchema = z
  .object({
    ok: z.boolean(),
    records: z.number(),
    checkpoints: z.number(),
    lastSeq: z.number(),
    rootHash: z.string().optional(),
    firstBad: z.object({ seq: z.number(), reason: z.string() }).optional(),
    tamper: z.array(z.object({ seq: z.number(), time: z.string(), findings: z.array(z.string()) })).optional(),
  })
  .openapi("AuditVerification");

const TreeHeadSchema = z
  .object({ size: z.number().int(), rootHash: z.string(), lastHash: z.string(), time: z.string(), keyId: z.string(), signature: z.string() })
  .openapi("AuditTreeHead");

const AuditHealthSchema = z
  .object({
    ok: z.boolean(),
    findings: z.array(z.string()),
    warnings: z.array(z.string()),
    tamperRecords: z.array(z.object({ seq: z.number(), time: z.string() })),
    head: TreeHeadSchema.nullable(),
    witnesses: z.array(z.object({ name: z.string(), publications: z.number(), lastPublished: z.object({ size: z.number(), time: z.string() }).nullable(), lastError: z.string().nullable() })),
  })
  .openapi("AuditHealth");

const InclusionProofSchema = z
  .object({ type: z.literal("vigil-audit-inclusion-proof"), record: AuditRecordSchema, leafIndex: z.number().int(), treeSize: z.number().int(), path: z.array(z.string()), head: TreeHeadSchema })
  .openapi("AuditInclusionProof");

const ConsistencyProofSchema = z
  .object({ type: z.literal("vigil-audit-consistency-proof"), fromSize: z.number().int(), toSize: z.number().int(), path: z.array(z.string()), head: TreeHeadSchema })
  .openapi("AuditConsistencyProof");

const SeqParams = z.object({ seq: z.coerce.number().int().min(1).max(Number.MAX_SAFE_INTEGER).openapi({ param: { name: "seq", in: "path" } }) });
const ConsistencyQuery = z.object({ from: z.coerce.number().int().min(0).max(Number.MAX_SAFE_INTEGER).openapi({ param: { name: "from", in: "query" } }) });

export function registerSystemRoutes(app: App, d: ApiDeps): void {
  app.openapi(
    createRoute(withAccess("public", { method: "get", path: "/v1/health", tags: ["system"], summary: "Liveness (no token needed)", responses: { 200: json(z.object({ ok: z.literal(true), version: z.string() }), "Alive") } })),
    async (c) => reply(c, { ok: true, version: d.host.version }),
  );

  app.openapi(
    createRoute(withAccess("host.read", { method: "get", path: "/v1/host", tags: ["system"], summary: "This host: name, accelerator and why, vigil home, and the audit log's health (tamper findings, witnesses)", responses: { 200: json(z.object({ name: z.string(), accelerator: z.string(), accelReason: z.string(), version: z.string(), home: z.string(), audit: AuditHealthSchema }), "Host") } })),
    async (c) => {
      await d.guard.authorize(c.get("ctx"), { action: "host.show", permission: "host.read", target: { kind: "host", name: d.host.name }, readOnly: true });
      return reply(c, { ...d.host, audit: await d.audit.health() });
    },
  );

  app.openapi(
    createRoute(withAccess("image.read", { method: "get", path: "/v1/images", tags: ["images"], summary: "Images VMs can be created from", responses: { 200: json(z.object({ images: z.array(ImageSchema) }), "Images") } })),
    async (c) => {
      await d.guard.authorize(c.get("ctx"), { action: "image.list", permission: "image.read", target: { kind: "image" }, readOnly: true });
      return reply(c, { images: [...d.catalog.list(), ...(await d.clones.templateImages(c.get("ctx").actor))] });
    },
  );

  app.openapi(
    createRoute(withAccess("image.manage", { method: "post", path: "/v1/images", tags: ["images"], summary: "Import a disk (qcow2 or raw, the request body) as an image; standalone qcow2 only, no backing or external data files", request: { query: ImportImageQuery, body: { content: { "application/octet-stream": { schema: z.string() } }, required: true } }, responses: { 201: json(ImageSchema, "The image") } })),
    async (c) => {
      const empty = (async function* () {})();
      return reply(c, await d.images.import(c.get("ctx"), c.req.raw.body ?? empty, c.req.valid("query")), 201);
    },
  );

  app.openapi(
    createRoute(withAccess("image.manage", { method: "delete", path: "/v1/images/{image}", tags: ["images"], summary: "Delete an imported image no VM is built on", request: { params: z.object({ image: z.string().max(64).openapi({ param: { name: "image", in: "path" } }) }) }, responses: { 200: json(z.object({ deleted: z.string() }), "Deleted") } })),
    async (c) => reply(c, await d.images.delete(c.get("ctx"), c.req.valid("param").image)),
  );

  app.openapi(
    createRoute(withAccess("authenticated", { method: "get", path: "/v1/audit", tags: ["audit"], summary: "Audit records you may read (oldest first, or the newest with tail=true): all with audit.read, else those about VMs you may read (as on /v1/events)", request: { query: AuditQuery }, responses: { 200: json(z.object({ records: z.array(AuditRecordSchema) }), "Records") } })),
    async (c) => {
      const q = c.req.valid("query");
      return reply(c, { records: await d.auditService.list(c.get("ctx"), { ...(q.after !== undefined ? { afterSeq: q.after } : {}), limit: q.limit, tail: q.tail === "true" }) });
    },
  );

  app.openapi(
    createRoute(withAccess("audit.read", { method: "get", path: "/v1/audit/verify", tags: ["audit"], summary: "Verify the hash chain, checkpoints and signed head", responses: { 200: json(VerifySchema, "Verification result") } })),
    async (c) => {
      return reply(c, await d.auditService.verify(c.get("ctx")));
    },
  );

  app.openapi(
    createRoute(withAccess("audit.read", { method: "get", path: "/v1/audit/head", tags: ["audit"], summary: "The newest signed tree head, the site's public key, and the log's health", responses: { 200: json(z.object({ head: TreeHeadSchema, keyId: z.string(), publicKey: z.string(), health: AuditHealthSchema }), "Head") } })),
    async (c) => reply(c, await d.auditService.head(c.get("ctx"))),
  );

  app.openapi(
    createRoute(withAccess("audit.read", { method: "get", path: "/v1/audit/proof/{seq}", tags: ["audit"], summary: "RFC 9162 inclusion proof of one record in the tree of the newest signed head", request: { params: SeqParams }, responses: { 200: json(InclusionProofSchema, "Inclusion proof") } })),
    async (c) => reply(c, await d.auditService.prove(c.get("ctx"), c.req.valid("param").seq)),
  );

  app.openapi(
    createRoute(withAccess("audit.read", { method: "get", path: "/v1/audit/consistency", tags: ["audit"], summary: "RFC 9162 consistency proof from an earlier tree size to the newest signed head", request: { query: ConsistencyQuery }, responses: { 200: json(ConsistencyProofSchema, "Consistency proof") } })),
    async (c) => reply(c, await d.auditService.consistency(c.get("ctx"), c.req.valid("query").from)),
  );

  app.openapi(
    createRoute(withAccess("audit.read", { method: "get", path: "/v1/audit/export", tags: ["audit"], summary: "The whole log as JSON lines, verifiable with the site's public key alone", responses: { 200: { content: { "application/x-ndjson": { schema: z.string() } }, description: "JSON lines" } } })),
    async (c) => {
      // Streamed a line at a time: the log is never held in memory whole.
      const lines = await d.auditService.export(c.get("ctx"));
      const encoder = new TextEncoder();
      const body = new ReadableStream<Uint8Array>({
        async pull(controller) {
          const next = await lines.next();
          if (next.done) controller.close();
          else controller.enqueue(encoder.encode(next.value + "\n"));
        },
        async cancel() {
          await lines.return(undefined);
        },
      });
      return c.body(body, 200, { "content-type": "application/x-ndjson" }) as never;
    },
  );

  app.openapi(
    createRoute(withAccess("authenticated", { method: "get", path: "/v1/events", tags: ["audit"], summary: "Server-sent events: every audit record you may read as it happens (event: audit), and the progress of one of your requests (?progress=REQUEST_ID, event: progress); a client too far behind gets event: overflow (with lastSeq) and the stream ends", request: { query: EventsQuery }, responses: { 200: { content: { "text/event-stream": { schema: z.string() } }, description: "Event stream" } } })),
    async (c) => {
      const ctx = c.get("ctx");
      const progressOf = c.req.valid("query").progress;
      return streamSSE(c, (stream) =>
        serveEvents(d, ctx, {
          get aborted() {
            return stream.aborted;
          },
          onAbort: (l) => stream.onAbort(l),
          event: (e) => stream.writeSSE(e),
          keepAlive: () => stream.write(": keep-alive\n\n").then(() => undefined),
        }, { progressOf }),
      );
    },
  );
}

const TaskSchema = z
  .object({
    requestId: z.string(),
    actor: z.string(),
    method: z.string(),
    path: z.string(),
    startedAt: z.string(),
    state: z.enum(["running", "ok", "failed"]),
    status: z.number().optional(),
    endedAt: z.string().optional(),
    durationMs: z.number().optional(),
    progress: z.object({ what: z.string(), current: z.number(), total: z.number() }).optional(),
  })
  .openapi("Task");

/** `vigil task list`, the web console's Tasks page (util/task-log.ts): your own tasks; with audit.read, everyone's. */
export function registerTaskRoutes(app: App, d: ApiDeps): void {
  app.openapi(
    createRoute(withAccess("authenticated", { method: "get", path: "/v1/tasks", tags: ["system"], summary: "The changes users asked for: running ones with their progress, then the last 200 finished (yours; everyone's with audit.read)", responses: { 200: json(z.object({ tasks: z.array(TaskSchema) }), "Tasks") } })),
    async (c) => {
      const actor = c.get("ctx").actor;
      const all = can(actor, "audit.read");
      return reply(c, { tasks: d.tasks.list((t) => all || t.actor === actor.name) });
    },
  );
}
