/** Introspection (the IDS): one sweep on demand, continuous watches with a containment policy, their findings. */
import { createRoute, z } from "@hono/zod-openapi";
import { WATCH_POLICIES, introspectRequestSchema, watchRequestSchema } from "../../introspection/service.ts";
import type { ApiDeps, App } from "../context.ts";
import { body, json, optionalBody, reply, withAccess } from "../route-kit.ts";
import { VmNameParams } from "../schemas.ts";

const FindingSchema = z
  .object({
    check: z.string(),
    severity: z.enum(["critical", "high", "medium", "info"]),
    message: z.string(),
    evidence: z.record(z.string(), z.unknown()).openapi({ description: "Where and what: address, symbol, expected vs found, and check-specific fields" }),
  })
  .openapi("Finding");

const VmiProcessSchema = z.object({
  pid: z.number(),
  tgid: z.number(),
  ppid: z.number(),
  comm: z.string(),
  state: z.string(),
  exitState: z.number(),
  taskAddr: z.string(),
  startTime: z.string(),
  kernelThread: z.boolean(),
  sources: z.array(z.string()).openapi({ description: "Where VMI found it: tasks (the kernel's list), pid-table, carve" }),
  inGuestView: z.boolean().optional().openapi({ description: "Whether the guest's own ps listed it (thread-group leaders, when the agent answered)" }),
});

const VmiModuleSchema = z.object({ name: z.string(), address: z.string(), state: z.number(), sources: z.array(z.string()), inGuestView: z.boolean().optional() });

const IntrospectionReportSchema = z
  .object({
    vm: z.string(),
    sweep: z.number().openapi({ description: "Sweep number since this boot's baseline" }),
    findings: z.array(FindingSchema),
    processes: z.array(VmiProcessSchema).openapi({ description: "The VMI view of processes" }),
    modules: z.array(VmiModuleSchema),
    kernel: z.object({ release: z.string(), buildId: z.string().nullable(), kaslrShift: z.string() }),
    durationMs: z.number().openapi({ description: "The sweep itself" }),
    totalMs: z.number().openapi({ description: "Including the guest's own view and a bracketing sweep when needed" }),
    timings: z.record(z.string(), z.number()),
    coverage: z.record(z.string(), z.unknown()),
    textPatches: z.record(z.string(), z.unknown()),
    carve: z.record(z.string(), z.unknown()).nullable(),
    baseline: z.object({ source: z.string(), takenAt: z.string(), notes: z.array(z.string()) }),
    guestView: z.object({ processes: z.number(), modules: z.number().nullable() }).nullable(),
  })
  .openapi("IntrospectionReport");

const WatchStatusSchema = z
  .object({
    vm: z.string(),
    intervalMs: z.number(),
    policy: z.enum(WATCH_POLICIES),
    guestViewEvery: z.number().openapi({ description: "The guest's own view (for the lie detector) is taken every Nth sweep" }),
    noNewModules: z.boolean().openapi({ description: "Any module loaded after this boot's baseline is a high finding (module-loaded)" }),
    startedBy: z.string(),
    startedAt: z.string(),
    status: z.enum(["watching", "armed", "recording", "waiting-for-agent", "baselining", "ready", "no-baseline", "error"]),
    sweeps: z.number(),
    lastSweepAt: z.string().nullable(),
    lastSweepMs: z.number().nullable(),
    activeFindings: z.number(),
    baseline: z.object({ source: z.string(), takenAt: z.string() }).nullable(),
    problem: z.string().nullable(),
  })
  .openapi("Watch");

const FindingRecordSchema = z.object({ seq: z.number(), time: z.string(), sweep: z.number().nullable(), check: z.string(), severity: z.string(), message: z.string(), evidence: z.record(z.string(), z.unknown()) });

const AlarmChangeSchema = z.object({
  sweep: z.number(),
  at: z.string(),
  change: z.enum(["raised", "changed", "cleared"]),
  severity: z.string(),
  message: z.string(),
  what: z.array(z.string()).optional().openapi({ description: "For a change: what changed (severity, message, evidence)" }),
});

const AlarmSchema = z
  .object({
    key: z.string().openapi({ description: "What identifies the alarm from sweep to sweep: the check and where it points" }),
    state: z.enum(["active", "cleared"]),
    finding: FindingSchema.openapi({ description: "The latest version (for a cleared alarm: the last one seen)" }),
    firstSweep: z.number(),
    lastSeenSweep: z.number(),
    raisedAt: z.string(),
    clearedAt: z.string().nullable(),
    history: z.array(AlarmChangeSchema).openapi({ description: "Oldest first: the first raise, then up to 31 of the newest changes" }),
    omittedChanges: z.number(),
  })
  .openapi("Alarm");

const FindingsQuery = z.object({ limit: z.coerce.number().int().min(1).max(1000).default(100).openapi({ param: { name: "limit", in: "query" } }) });

export function registerIntrospectionRoutes(app: App, d: ApiDeps): void {
  app.openapi(
    createRoute(withAccess("vm.introspect", { method: "post", path: "/v1/vms/{name}/introspect", tags: ["introspection"], summary: "One sweep of the running guest from outside: integrity and cross-view checks against this boot's baseline, and the VMI view of processes and modules", request: { params: VmNameParams, ...optionalBody(introspectRequestSchema) }, responses: { 200: json(IntrospectionReportSchema, "The report") } })),
    async (c) => reply(c, await d.introspection.introspect(c.get("ctx"), c.req.valid("param").name, c.req.valid("json") ?? {})),
  );

  app.openapi(
    createRoute(withAccess("vm.introspect", { method: "get", path: "/v1/vms/{name}/findings", tags: ["introspection"], summary: "The watch's findings: the alarms active now, every alarm (active or cleared) with its history, and the newest new-finding records (from the audit log)", request: { params: VmNameParams, query: FindingsQuery }, responses: { 200: json(z.object({ vm: z.string(), watch: WatchStatusSchema.nullable(), active: z.array(FindingSchema), alarms: z.array(AlarmSchema).openapi({ description: "Active and cleared alarms of the running watch, each with its history of changes" }), recent: z.array(FindingRecordSchema) }), "Findings") } })),
    async (c) => reply(c, await d.introspection.findings(c.get("ctx"), c.req.valid("param").name, c.req.valid("query").limit)),
  );

  app.openapi(
    createRoute(withAccess("vm.introspect", { method: "put", path: "/v1/vms/{name}/watch", tags: ["introspection"], summary: "Start or change the VM's watch: sweeps every intervalMs, each new finding audited, and the policy (alert, pause, snapshot-and-pause) applied; it survives daemon restarts", request: { params: VmNameParams, ...body(watchRequestSchema) }, responses: { 200: json(WatchStatusSchema, "The watch") } })),
    async (c) => reply(c, await d.introspection.setWatch(c.get("ctx"), c.req.valid("param").name, c.req.valid("json"))),
  );

  app.openapi(
    createRoute(withAccess("vm.introspect", { method: "delete", path: "/v1/vms/{name}/watch", tags: ["introspection"], summary: "Stop the VM's watch", request: { params: VmNameParams }, responses: { 200: json(z.object({ vm: z.string(), stopped: z.boolean() }), "Stopped") } })),
    async (c) => reply(c, await d.introspection.stopWatch(c.get("ctx"), c.req.valid("param").name)),
  );

  app.openapi(
    createRoute(withAccess("vm.introspect", { method: "get", path: "/v1/watches", tags: ["introspection"], summary: "Every watch on a VM you may introspect, with its status", responses: { 200: json(z.object({ watches: z.array(WatchStatusSchema) }), "Watches") } })),
    async (c) => reply(c, await d.introspection.listWatches(c.get("ctx"))),
  );
}
