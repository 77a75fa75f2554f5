/** A VM's posture and the network-access gate's policies (docs/transience.md). */
import { createRoute, z } from "@hono/zod-openapi";
import { gatePolicySchema } from "../../posture/posture-service.ts";
import type { ApiDeps, App } from "../context.ts";
import { body, json, reply, withAccess } from "../route-kit.ts";
import { POSTURE_STATES, VmNameParams } from "../schemas.ts";

const GatePolicySchema = gatePolicySchema.openapi("GatePolicy");
const PostureSchema = z
  .object({
    vm: z.string(),
    state: z.enum(POSTURE_STATES),
    reasons: z.array(z.string()),
    policy: GatePolicySchema.extend({ scope: z.string() }),
    quarantined: z.object({ since: z.string(), reason: z.string(), actor: z.string() }).nullable(),
    lastScan: z.record(z.string(), z.unknown()).nullable(),
    lastRunningAt: z.string().nullable(),
    lastPatchedAt: z.string().nullable(),
  })
  .openapi("Posture");
const StaleRowSchema = z
  .object({
    vm: z.string(),
    vmState: z.string(),
    template: z.boolean(),
    state: z.enum(POSTURE_STATES),
    reasons: z.array(z.string()),
    scannedAt: z.string().nullable(),
    ageDays: z.number().nullable(),
    advisoriesChanged: z.boolean().nullable(),
    rulesChanged: z.boolean().nullable(),
    ranSince: z.boolean(),
    overdue: z.boolean(),
    pending: z.number(),
    worstSeverity: z.string().nullable(),
    findings: z.number(),
    behind: z.boolean(),
  })
  .openapi("StaleReportRow");
const ScopeParams = z.object({ scope: z.string().max(200).openapi({ param: { name: "scope", in: "path" }, example: "label:tier=web" }) });

export function registerPostureRoutes(app: App, d: ApiDeps): void {
  app.openapi(
    createRoute(withAccess("vm.read", { method: "get", path: "/v1/vms/{name}/posture", tags: ["posture"], summary: "The VM's posture: state, every reason, its last scan and the gate policy that applies", request: { params: VmNameParams }, responses: { 200: json(PostureSchema, "Posture") } })),
    async (c) => reply(c, await d.posture.show(c.get("ctx"), c.req.valid("param").name)),
  );
  app.openapi(
    createRoute(withAccess("vm.read", { method: "get", path: "/v1/posture/stale", tags: ["posture"], summary: "The stale-fleet report: the dormant VMs and templates you may read, how far behind each scan is, worst first", responses: { 200: json(z.object({ vms: z.array(StaleRowSchema) }), "The report") } })),
    async (c) => reply(c, { vms: await d.posture.staleReport(c.get("ctx")) }),
  );
  app.openapi(
    createRoute(withAccess("vm.quarantine", { method: "post", path: "/v1/posture/rescan", tags: ["posture"], summary: "Rescan now every dormant, previously scanned VM whose scan is behind (as the system; each scan audited)", responses: { 200: json(z.object({ scanned: z.array(z.string()), failed: z.array(z.object({ vm: z.string(), error: z.string() })) }), "What was rescanned") } })),
    async (c) => reply(c, await d.posture.rescanNow(c.get("ctx"))),
  );
  app.openapi(
    createRoute(withAccess("network.read", { method: "get", path: "/v1/posture/policies", tags: ["posture"], summary: "The gate policies by scope", responses: { 200: json(z.object({ policies: z.array(z.object({ scope: z.string(), policy: GatePolicySchema, actor: z.string(), updatedAt: z.string() })) }), "Policies") } })),
    async (c) => reply(c, { policies: await d.posture.listPolicies(c.get("ctx")) }),
  );
  app.openapi(
    createRoute(withAccess("vm.quarantine", { method: "put", path: "/v1/posture/policies/{scope}", tags: ["posture"], summary: 'Set the gate policy of a scope ("default", "vm:NAME", "label:KEY=VALUE")', request: { params: ScopeParams, ...body(z.unknown()) }, responses: { 200: json(z.object({ scope: z.string(), policy: GatePolicySchema }), "The policy") } })),
    async (c) => reply(c, await d.posture.setPolicy(c.get("ctx"), c.req.valid("param").scope, c.req.valid("json"))),
  );
}

const ScanResultSchema = z
  .object({ vm: z.string(), posture: z.object({ state: z.enum(POSTURE_STATES), reasons: z.array(z.string()) }), released: z.boolean(), scan: z.record(z.string(), z.unknown()), timings: z.object({ advisoriesMs: z.number(), scanMs: z.number(), packagesMs: z.number() }) })
  .openapi("ScanResult");

export function registerScanRoutes(app: App, d: ApiDeps): void {
  app.openapi(
    createRoute(withAccess("vm.control", { method: "post", path: "/v1/vms/{name}/scan", tags: ["posture"], summary: "Scan the stopped VM's disks offline (packages, pending security updates, signatures) and record its posture", request: { params: VmNameParams }, responses: { 200: json(ScanResultSchema, "The scan and the posture") } })),
    async (c) => reply(c, await d.scans.scan(c.get("ctx"), c.req.valid("param").name)),
  );
  app.openapi(
    createRoute(withAccess("vm.quarantine", { method: "put", path: "/v1/posture/advisories", tags: ["posture"], summary: "Set (and load) the advisory data scans compare against: a Packages index or an apt lists directory, optionally the security tracker's JSON", request: body(z.object({ from: z.string().optional(), tracker: z.string().optional(), release: z.string().optional() })), responses: { 200: json(z.record(z.string(), z.unknown()), "What was loaded") } })),
    async (c) => reply(c, await d.scans.updateAdvisories(c.get("ctx"), c.req.valid("json"))),
  );
  app.openapi(
    createRoute(withAccess("vm.quarantine", { method: "put", path: "/v1/posture/rules", tags: ["posture"], summary: "Set the YARA rules signature scans use (compiled first)", request: body(z.object({ rules: z.string() })), responses: { 200: json(z.object({ rulesSha256: z.string(), bytes: z.number() }), "The rules") } })),
    async (c) => reply(c, await d.scans.setRules(c.get("ctx"), c.req.valid("json"))),
  );
}
