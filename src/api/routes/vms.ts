/**
 * VM routes. Each handler only translates HTTP into one service call; the service authorizes, audits, locks
 * and checks state.
 */
import { createRoute, z } from "@hono/zod-openapi";
import { createVmRequestSchema } from "../../vm/spec.ts";
import { vmSummaryJson } from "../../vm/vm-view.ts";
import { chownSchema } from "../../provenance/provenance-service.ts";
import { agentArgSchema } from "../../guest-agent/protocol.ts";
import type { ApiDeps, App } from "../context.ts";
import { body, json, optionalBody, reply, withAccess } from "../route-kit.ts";
import { AuditRecordSchema, GuestProcessListSchema, VmListSchema, VmNameParams, VmSchema, VmSummaryListSchema } from "../schemas.ts";

const StartBody = z.strictObject({
  wait: z.boolean().default(false),
  waitTimeoutSec: z.number().int().min(1).max(3600).default(120),
  paused: z.boolean().default(false),
});
const StopBody = z.strictObject({ timeoutSec: z.number().int().min(0).max(3600).default(60) });
const RestartBody = StartBody.omit({ paused: true });
const PingBody = z.strictObject({ count: z.number().int().min(1).max(1000).default(1) });
// Without a body the framework hands an optional-body route `{}` unvalidated (no defaults filled in); a sent
// body, even `{}`, comes back with its defaults. So an empty object means "no body": use the defaults.
const START_DEFAULTS = StartBody.parse({});
const STOP_DEFAULTS = StopBody.parse({});
const RESTART_DEFAULTS = RestartBody.parse({});
const PING_DEFAULTS = PingBody.parse({});
function orDefaults<T extends object>(valid: T | undefined, defaults: T): T {
  return valid === undefined || Object.keys(valid).length === 0 ? defaults : valid;
}
const VmListQuery = z.object({
  view: z.enum(["full", "summary"]).default("full").openapi({ param: { name: "view", in: "query" } }),
});
const DestroyQuery = z.object({
  force: z.enum(["true", "false"]).default("false").openapi({ param: { name: "force", in: "query" } }),
});
const PurgeBody = z.strictObject({ force: z.boolean().default(false) });
const ExecBody = z.strictObject({ argv: z.array(agentArgSchema).min(1).max(32) });
const ConsoleLogQuery = z.object({
  bytes: z.coerce.number().int().min(1).max(16 * 1024 * 1024).default(256 * 1024).openapi({ param: { name: "bytes", in: "query" } }),
});

const RemovalSchema = z
  .object({
    id: z.string(),
    name: z.string(),
    destroyed: z.array(z.object({ path: z.string(), purpose: z.string(), bytes: z.number() })),
    unreachable: z.array(z.object({ path: z.string(), host: z.string(), purpose: z.string(), why: z.string() })),
    derived: z.array(z.object({ name: z.string(), kind: z.enum(["clone", "import"]), from: z.string() })).openapi({ description: "With purge: VMs made from this one (clones, imports of its bundles, transitively); they hold copies of its data and are not touched" }),
  })
  .openapi("Removal");

const DataFileSchema = z
  .object({
    id: z.string(),
    vmId: z.string(),
    host: z.string(),
    path: z.string(),
    purpose: z.string(),
    size: z.number().nullable(),
    sha256: z.string().nullable(),
    createdAt: z.string(),
    removedAt: z.string().nullable(),
    removedHow: z.string().nullable(),
  })
  .openapi("DataFile");

const HistorySchema = z
  .object({
    id: z.string(),
    name: z.string(),
    exists: z.boolean(),
    owner: z.string().nullable(),
    createdBy: z.string().nullable(),
    createdAt: z.string().nullable(),
    lineage: z.record(z.string(), z.unknown()).nullable(),
    locations: z.array(z.object({ host: z.string(), path: z.string(), since: z.string(), until: z.string().nullable() })),
    events: z.array(AuditRecordSchema),
  })
  .openapi("VmHistory");

const vmPath = (suffix: string) => `/v1/vms/{name}${suffix}`;

export function registerVmRoutes(app: App, d: ApiDeps): void {
  const ctx = (c: { get(k: "ctx"): import("../../auth/guard.ts").RequestContext }) => c.get("ctx");

  app.openapi(
    createRoute(withAccess("vm.read", { method: "get", path: "/v1/vms", tags: ["vms"], summary: "List the VMs you may see (view=summary: only the fields an inventory lists, for thousands of VMs)", request: { query: VmListQuery }, responses: { 200: json(z.union([VmListSchema, VmSummaryListSchema]), "VMs") } })),
    async (c) => {
      if (c.req.valid("query").view === "summary") {
        // The inventory's list of every VM, its hot path: text put together from each record's kept JSON (vm-view.ts).
        const records = await d.vms.listShared(ctx(c));
        const posture = await d.posture.states(records);
        const now = Date.now();
        const body = `{"vms":[${records.map((v) => vmSummaryJson(v, now, posture.get(v.id) ?? "unknown")).join(",")}]}`;
        return c.body(body, 200, { "content-type": "application/json" }) as never;
      }
      const vms = await d.vms.list(ctx(c));
      const posture = await d.posture.states(vms);
      // Each view is a fresh object of this request: the posture is added to it rather than copied into another.
      return reply(c, { vms: vms.map((v) => Object.assign(v, { posture: posture.get(v.id) ?? "unknown" })) }, 200);
    },
  );

  app.openapi(
    createRoute(withAccess("vm.create", { method: "post", path: "/v1/vms", tags: ["vms"], summary: "Create a VM from an image", request: body(createVmRequestSchema), responses: { 201: json(VmSchema, "The new VM") } })),
    async (c) => reply(c, await d.vms.create(ctx(c), c.req.valid("json")), 201),
  );

  app.openapi(
    createRoute(withAccess("vm.read", { method: "get", path: vmPath(""), tags: ["vms"], summary: "Show a VM", request: { params: VmNameParams }, responses: { 200: json(VmSchema, "The VM") } })),
    async (c) => reply(c, await d.vms.show(ctx(c), c.req.valid("param").name), 200),
  );

  app.openapi(
    createRoute(withAccess("vm.delete", { method: "delete", path: vmPath(""), tags: ["vms"], summary: "Destroy a VM and remove its files", request: { params: VmNameParams, query: DestroyQuery }, responses: { 200: json(RemovalSchema, "What was removed") } })),
    async (c) => reply(c, await d.vms.destroy(ctx(c), c.req.valid("param").name, { force: c.req.valid("query").force === "true" }), 200),
  );

  app.openapi(
    createRoute(withAccess("vm.control", { method: "post", path: vmPath("/start"), tags: ["vms"], summary: "Start a VM (optionally wait until its agent answers)", request: { params: VmNameParams, ...optionalBody(StartBody) }, responses: { 200: json(VmSchema, "The VM") } })),
    async (c) => {
      const b = orDefaults(c.req.valid("json"), START_DEFAULTS);
      return reply(c, await d.vms.start(ctx(c), c.req.valid("param").name, { wait: b.wait, waitTimeoutMs: b.waitTimeoutSec * 1000, paused: b.paused }), 200);
    },
  );

  app.openapi(
    createRoute(withAccess("vm.control", { method: "post", path: vmPath("/stop"), tags: ["vms"], summary: "Stop a VM: ACPI power-off, then quit, then kill", request: { params: VmNameParams, ...optionalBody(StopBody) }, responses: { 200: json(z.object({ how: z.enum(["acpi", "quit", "killed"]), vm: VmSchema }), "How it stopped") } })),
    async (c) => {
      const b = orDefaults(c.req.valid("json"), STOP_DEFAULTS);
      return reply(c, await d.vms.stop(ctx(c), c.req.valid("param").name, { timeoutMs: b.timeoutSec * 1000 }), 200);
    },
  );

  for (const [action, summary] of [
    ["kill", "Kill a VM's QEMU immediately"],
    ["pause", "Pause a VM's vCPUs"],
    ["resume", "Resume a paused VM"],
  ] as const) {
    app.openapi(
      createRoute(withAccess("vm.control", { method: "post", path: vmPath(`/${action}`), tags: ["vms"], summary, request: { params: VmNameParams }, responses: { 200: json(VmSchema, "The VM") } })),
      async (c) => reply(c, await d.vms[action](ctx(c), c.req.valid("param").name), 200),
    );
  }

  app.openapi(
    createRoute(withAccess("vm.control", { method: "post", path: vmPath("/restart"), tags: ["vms"], summary: "Restart a VM in a fresh QEMU process", request: { params: VmNameParams, ...optionalBody(RestartBody) }, responses: { 200: json(VmSchema, "The VM") } })),
    async (c) => {
      const b = orDefaults(c.req.valid("json"), RESTART_DEFAULTS);
      return reply(c, await d.vms.restart(ctx(c), c.req.valid("param").name, { wait: b.wait, waitTimeoutMs: b.waitTimeoutSec * 1000 }), 200);
    },
  );

  app.openapi(
    createRoute(withAccess("vm.read", { method: "get", path: vmPath("/qemu-command"), tags: ["vms"], summary: "The exact QEMU command line vigil runs for the VM", request: { params: VmNameParams }, responses: { 200: json(z.object({ binary: z.string(), argv: z.array(z.string()) }), "Command line") } })),
    async (c) => reply(c, await d.vms.qemuCommand(ctx(c), c.req.valid("param").name)),
  );

  app.openapi(
    createRoute(withAccess("vm.console", { method: "get", path: vmPath("/console-log"), tags: ["vms"], summary: "The captured serial console output", request: { params: VmNameParams, query: ConsoleLogQuery }, responses: { 200: { content: { "text/plain": { schema: z.string() } }, description: "Console output" } } })),
    async (c) => c.text(await d.vms.consoleLog(ctx(c), c.req.valid("param").name, c.req.valid("query").bytes), 200),
  );

  app.openapi(
    createRoute(withAccess("vm.console", { method: "get", path: vmPath("/console"), tags: ["vms"], summary: "Interactive serial console: an HTTP upgrade (Upgrade: vigil-console) to a raw byte stream", request: { params: VmNameParams }, responses: { 101: { description: "Switching to the console stream" } } })),
    async (c) => {
      // Reached only without an Upgrade header: the server's upgrade handler serves real console sessions.
      await d.vms.openConsole(ctx(c), c.req.valid("param").name);
      return c.json({ error: { code: "VIGIL_BAD_REQUEST", message: "The console needs an HTTP upgrade (Connection: Upgrade, Upgrade: vigil-console)" } }, 400);
    },
  );

  app.openapi(
    createRoute(withAccess("vm.read", { method: "get", path: vmPath("/guest/ps"), tags: ["guest"], summary: "The guest's own process list, from its agent", request: { params: VmNameParams }, responses: { 200: json(GuestProcessListSchema, "Processes") } })),
    async (c) => reply(c, await d.vms.withAgent(ctx(c), c.req.valid("param").name, { action: "vm.guest-ps", permission: "vm.read" }, (a) => a.ps()), 200),
  );

  app.openapi(
    createRoute(withAccess("vm.read", { method: "get", path: vmPath("/guest/info"), tags: ["guest"], summary: "Kernel, uptime and agent version, from the guest agent", request: { params: VmNameParams }, responses: { 200: json(z.object({ kernel: z.string(), uptime: z.number(), hostname: z.string(), agent: z.string(), protocol: z.number(), bootId: z.string() }), "Guest info") } })),
    async (c) => reply(c, await d.vms.withAgent(ctx(c), c.req.valid("param").name, { action: "vm.guest-info", permission: "vm.read" }, (a) => a.info()), 200),
  );

  app.openapi(
    createRoute(withAccess("vm.read", { method: "post", path: vmPath("/guest/ping"), tags: ["guest"], summary: "Ping the guest agent COUNT times; the round-trip times as the daemon measured them", request: { params: VmNameParams, ...optionalBody(PingBody) }, responses: { 200: json(z.object({ rttMs: z.array(z.number()) }), "Round-trip times") } })),
    async (c) => reply(c, await d.vms.pingAgent(ctx(c), c.req.valid("param").name, orDefaults(c.req.valid("json"), PING_DEFAULTS).count), 200),
  );

  app.openapi(
    createRoute(withAccess("vm.exec", { method: "post", path: vmPath("/guest/exec"), tags: ["guest"], summary: "Run an allow-listed command in the guest", request: { params: VmNameParams, ...body(ExecBody) }, responses: { 200: json(z.object({ exitCode: z.number(), stdout: z.string(), stderr: z.string(), truncated: z.boolean() }), "Result (stdout/stderr base64)") } })),
    async (c) => {
      const { argv } = c.req.valid("json");
      return reply(c, await d.vms.withAgent(ctx(c), c.req.valid("param").name, { action: "vm.guest-exec", permission: "vm.exec", details: { argv } }, (a) => a.exec(argv)), 200);
    },
  );

  app.openapi(
    createRoute(withAccess("vm.chown", { method: "post", path: vmPath("/chown"), tags: ["ownership"], summary: "Transfer ownership (the approver is recorded)", request: { params: VmNameParams, ...body(chownSchema) }, responses: { 200: json(z.object({ id: z.string(), name: z.string(), owner: z.string(), previousOwner: z.string(), approver: z.string() }), "New ownership") } })),
    async (c) => reply(c, await d.provenance.chown(ctx(c), c.req.valid("param").name, c.req.valid("json")), 200),
  );

  app.openapi(
    createRoute(withAccess("vm.read", { method: "get", path: vmPath("/history"), tags: ["ownership"], summary: "Who created and touched the VM, where it came from and where it has been", request: { params: VmNameParams }, responses: { 200: json(HistorySchema, "History") } })),
    async (c) => reply(c, await d.provenance.history(ctx(c), c.req.valid("param").name), 200),
  );

  app.openapi(
    createRoute(withAccess("vm.read", { method: "get", path: vmPath("/where"), tags: ["ownership"], summary: "Every place the VM's data lives now and lived", request: { params: VmNameParams }, responses: { 200: json(z.object({ id: z.string(), name: z.string(), live: z.array(DataFileSchema), removed: z.array(DataFileSchema) }), "Data locations") } })),
    async (c) => reply(c, await d.provenance.where(ctx(c), c.req.valid("param").name), 200),
  );

  app.openapi(
    createRoute(withAccess("vm.delete", { method: "post", path: vmPath("/purge"), tags: ["ownership"], summary: "Destroy the VM and overwrite every registered copy of its data that vigil can reach", request: { params: VmNameParams, ...optionalBody(PurgeBody) }, responses: { 200: json(RemovalSchema, "What was destroyed and what could not be reached") } })),
    async (c) => {
      const b = PurgeBody.parse(c.req.valid("json") ?? {});
      return reply(c, await d.vms.destroy(ctx(c), c.req.valid("param").name, { force: b.force, purge: true }), 200);
    },
  );
}
