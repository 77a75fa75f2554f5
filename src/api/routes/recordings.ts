/** Recordings of a VM's execution: record, list, show, replay, bisect, delete, export (docs/recording.md). */
import { Readable } from "node:stream";
import { createRoute, z } from "@hono/zod-openapi";
import type { ApiDeps, App } from "../context.ts";
import { json, optionalBody, reply, withAccess } from "../route-kit.ts";
import { VmNameParams } from "../schemas.ts";

const RecordingSchema = z.record(z.string(), z.unknown()).openapi("Recording");
const RecordingParams = z.object({ recording: z.string().max(80).openapi({ param: { name: "recording", in: "path" }, example: "demo-1" }) });
const RecordBody = z.strictObject({
  wait: z.boolean().optional(),
  waitTimeoutMs: z.number().int().min(1000).max(3_600_000).optional(),
  shadow: z.boolean().optional().openapi({ description: "A replica trails the recording a few seconds behind and runs the IDS checks on its RAM" }),
  gateOutput: z.boolean().optional().openapi({ description: "Console output is shown only once the shadow has checked the execution up to it (needs shadow)" }),
});
const ReplayBody = z.strictObject({ until: z.union([z.string().max(40), z.number().int().nonnegative()]).optional() });
const BisectBody = z.strictObject({ check: z.string().max(40), probes: z.number().int().min(2).max(64).optional() });

export function registerRecordingRoutes(app: App, d: ApiDeps): void {
  app.openapi(
    createRoute(withAccess("vm.control", { method: "post", path: "/v1/vms/{name}/record", tags: ["recordings"], summary: "Start the stopped VM under QEMU record/replay (refused, with the reason, for what QEMU cannot record)", request: { params: VmNameParams, ...optionalBody(RecordBody) }, responses: { 200: json(z.object({ vm: z.record(z.string(), z.unknown()), recording: RecordingSchema }), "The VM and its recording") } })),
    async (c) => reply(c, await d.recordings.startRecording(c.get("ctx"), c.req.valid("param").name, c.req.valid("json") ?? {})),
  );
  app.openapi(
    createRoute(withAccess("vm.read", { method: "get", path: "/v1/recordings", tags: ["recordings"], summary: "The recordings of the VMs the caller may read", request: { query: z.object({ vm: z.string().max(64).optional() }) }, responses: { 200: json(z.object({ recordings: z.array(RecordingSchema) }), "Recordings") } })),
    async (c) => reply(c, { recordings: await d.recordings.list(c.get("ctx"), c.req.valid("query").vm) }),
  );
  app.openapi(
    createRoute(withAccess("vm.read", { method: "get", path: "/v1/recordings/{recording}", tags: ["recordings"], summary: "One recording: its QEMU build, log, end point and files", request: { params: RecordingParams }, responses: { 200: json(RecordingSchema, "The recording") } })),
    async (c) => reply(c, await d.recordings.show(c.get("ctx"), c.req.valid("param").recording)),
  );
  app.openapi(
    createRoute(withAccess("vm.console", { method: "get", path: "/v1/recordings/{recording}/serial", tags: ["recordings"], summary: "The serial transcript of the recording", request: { params: RecordingParams }, responses: { 200: json(z.object({ serial: z.string() }), "The transcript") } })),
    async (c) => reply(c, { serial: await d.recordings.serial(c.get("ctx"), c.req.valid("param").recording) }),
  );
  app.openapi(
    createRoute(withAccess("vm.console", { method: "post", path: "/v1/recordings/{recording}/replay", tags: ["recordings"], summary: "Replay the recording in a jailed replica, to its end (verifying serial output and RAM digest) or to a point", request: { params: RecordingParams, ...optionalBody(ReplayBody) }, responses: { 200: json(z.record(z.string(), z.unknown()), "What the replay reached") } })),
    async (c) => reply(c, await d.recordings.replay(c.get("ctx"), c.req.valid("param").recording, c.req.valid("json") ?? {})),
  );
  app.openapi(
    createRoute(withAccess("vm.introspect", { method: "post", path: "/v1/recordings/{recording}/bisect", tags: ["recordings"], summary: "Find the instruction window in which an introspection check first reports, replaying the recording", request: { params: RecordingParams, ...optionalBody(BisectBody) }, responses: { 200: json(z.record(z.string(), z.unknown()), "The window") } })),
    async (c) => {
      const b = c.req.valid("json") ?? { check: "" };
      return reply(c, await d.recordings.bisect(c.get("ctx"), c.req.valid("param").recording, { check: b.check, probes: b.probes }));
    },
  );
  app.openapi(
    createRoute(withAccess("vm.delete", { method: "delete", path: "/v1/recordings/{recording}", tags: ["recordings"], summary: "Delete a recording and its files", request: { params: RecordingParams }, responses: { 200: json(z.object({ deleted: z.string(), files: z.number() }), "Deleted") } })),
    async (c) => reply(c, await d.recordings.delete(c.get("ctx"), c.req.valid("param").recording)),
  );
  app.openapi(
    createRoute(withAccess("vm.export", { method: "post", path: "/v1/recordings/{recording}/export", tags: ["recordings"], summary: "Export a complete recording as one tar (manifest, log, serial transcript, disks), streamed back", request: { params: RecordingParams }, responses: { 200: { content: { "application/x-tar": { schema: z.string() } }, description: "The tar" } } })),
    async (c) => {
      const prepared = await d.recordings.prepareExport(c.get("ctx"), c.req.valid("param").recording);
      const stream = Readable.toWeb(Readable.from(prepared.chunks())) as ReadableStream<Uint8Array>;
      return c.body(stream, 200, { "content-type": "application/x-tar", "content-length": String(prepared.totalBytes) }) as never;
    },
  );
}
