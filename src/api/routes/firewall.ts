/** A VM's firewall policy, the quarantine zone and its services (docs/network.md). */
import { createRoute, z } from "@hono/zod-openapi";
import { addRuleSchema, defaultsSchema, quarantineSchema, serviceSchema } from "../../network/firewall/firewall-service.ts";
import { policySchema as policyInput, ruleSchema as ruleInput } from "../../network/firewall/policy.ts";
import type { ApiDeps, App } from "../context.ts";
import { body, json, reply, withAccess } from "../route-kit.ts";
import { VmNameParams } from "../schemas.ts";

const ruleSchema = ruleInput.openapi("FirewallRule");
const policySchema = policyInput.openapi("FirewallPolicy");
const FwChangeSchema = z
  .object({ vm: z.string(), version: z.number(), summary: z.string(), installed: z.boolean(), reason: z.string().optional(), notes: z.array(z.string()) })
  .openapi("FirewallChange");
const ApplySchema = z.object({ installed: z.boolean(), reason: z.string().optional(), nics: z.number(), notes: z.array(z.object({ vmId: z.string(), rule: z.number(), note: z.string() })), at: z.string() });
const FwShowSchema = z
  .object({
    vm: z.string(),
    version: z.number(),
    policy: policySchema,
    rules: z.array(z.object({ index: z.number(), text: z.string(), rule: ruleSchema, note: z.string().optional() })),
    quarantine: z.object({ since: z.string(), reason: z.string(), actor: z.string() }).nullable(),
    nics: z.array(z.object({ nic: z.string(), network: z.string(), tap: z.string(), mac: z.string(), ip: z.string() })),
    installed: z.array(z.object({ family: z.string(), chain: z.string(), rules: z.array(z.string()), json: z.array(z.unknown()) })),
    lastApply: ApplySchema.nullable(),
  })
  .openapi("FirewallShow");
const ServiceSchema = z.object({ name: z.string(), ip: z.string(), proto: z.enum(["tcp", "udp"]), port: z.number() }).openapi("QuarantineService");
const QuarantineResult = z.object({ vm: z.string(), quarantined: z.boolean(), changed: z.boolean(), since: z.string().optional(), installed: z.boolean(), reason: z.string().optional() });
const RuleIndexParams = VmNameParams.extend({ index: z.string().regex(/^\d{1,5}$/).openapi({ param: { name: "index", in: "path" }, example: "1" }) });
const ServiceParams = z.object({ service: z.string().max(64).openapi({ param: { name: "service", in: "path" }, example: "updates" }) });

export function registerFirewallRoutes(app: App, d: ApiDeps): void {
  app.openapi(
    createRoute(withAccess("network.read", { method: "get", path: "/v1/vms/{name}/firewall", tags: ["firewall"], summary: "The VM's firewall policy, its version, and the rules installed on this host for its NICs", request: { params: VmNameParams }, responses: { 200: json(FwShowSchema, "Policy and installed rules") } })),
    async (c) => reply(c, await d.firewall.show(c.get("ctx"), c.req.valid("param").name)),
  );
  app.openapi(
    createRoute(withAccess("network.read", { method: "get", path: "/v1/vms/{name}/firewall/history", tags: ["firewall"], summary: "Every version of the VM's firewall policy", request: { params: VmNameParams }, responses: { 200: json(z.object({ vm: z.string(), versions: z.array(z.object({ vmId: z.string(), version: z.number(), policy: policySchema, actor: z.string(), createdAt: z.string() })) }), "Versions") } })),
    async (c) => reply(c, await d.firewall.history(c.get("ctx"), c.req.valid("param").name)),
  );
  app.openapi(
    createRoute(withAccess("vm.firewall", { method: "put", path: "/v1/vms/{name}/firewall", tags: ["firewall"], summary: "Replace the VM's firewall policy (a new version, installed as one transaction)", request: { params: VmNameParams, ...body(z.unknown()) }, responses: { 200: json(FwChangeSchema, "The new version") } })),
    async (c) => reply(c, await d.firewall.setPolicy(c.get("ctx"), c.req.valid("param").name, c.req.valid("json"))),
  );
  app.openapi(
    createRoute(withAccess("vm.firewall", { method: "post", path: "/v1/vms/{name}/firewall/rules", tags: ["firewall"], summary: "Add a rule (at position `at`, 1-based; default: last)", request: { params: VmNameParams, ...body(addRuleSchema) }, responses: { 200: json(FwChangeSchema, "The new version") } })),
    async (c) => reply(c, await d.firewall.addRule(c.get("ctx"), c.req.valid("param").name, c.req.valid("json"))),
  );
  app.openapi(
    createRoute(withAccess("vm.firewall", { method: "delete", path: "/v1/vms/{name}/firewall/rules/{index}", tags: ["firewall"], summary: "Remove rule INDEX (1-based)", request: { params: RuleIndexParams }, responses: { 200: json(FwChangeSchema, "The new version") } })),
    async (c) => reply(c, await d.firewall.removeRule(c.get("ctx"), c.req.valid("param").name, Number(c.req.valid("param").index))),
  );
  app.openapi(
    createRoute(withAccess("vm.firewall", { method: "patch", path: "/v1/vms/{name}/firewall/defaults", tags: ["firewall"], summary: "Set the default verdict per direction", request: { params: VmNameParams, ...body(defaultsSchema) }, responses: { 200: json(FwChangeSchema, "The new version") } })),
    async (c) => reply(c, await d.firewall.setDefaults(c.get("ctx"), c.req.valid("param").name, c.req.valid("json"))),
  );
  app.openapi(
    createRoute(withAccess("vm.quarantine", { method: "post", path: "/v1/vms/{name}/quarantine", tags: ["firewall"], summary: "Move the VM into the quarantine zone (immediate, no restart; idempotent)", request: { params: VmNameParams, ...body(quarantineSchema) }, responses: { 200: json(QuarantineResult, "Quarantined") } })),
    async (c) => reply(c, await d.firewall.quarantine(c.get("ctx"), c.req.valid("param").name, c.req.valid("json"))),
  );
  app.openapi(
    createRoute(withAccess("vm.quarantine", { method: "post", path: "/v1/vms/{name}/release", tags: ["firewall"], summary: "Take the VM out of quarantine (immediate, no restart; idempotent)", request: { params: VmNameParams }, responses: { 200: json(QuarantineResult, "Released") } })),
    async (c) => reply(c, await d.firewall.release(c.get("ctx"), c.req.valid("param").name)),
  );
  app.openapi(
    createRoute(withAccess("network.read", { method: "get", path: "/v1/quarantine/services", tags: ["firewall"], summary: "The quarantine zone's named services", responses: { 200: json(z.object({ services: z.array(ServiceSchema) }), "Services") } })),
    async (c) => reply(c, { services: await d.firewall.listServices(c.get("ctx")) }),
  );
  app.openapi(
    createRoute(withAccess("network.manage", { method: "post", path: "/v1/quarantine/services", tags: ["firewall"], summary: "Name a service quarantined VMs may reach", request: { ...body(serviceSchema) }, responses: { 200: json(ServiceSchema.extend({ installed: z.boolean() }), "Added") } })),
    async (c) => reply(c, await d.firewall.addService(c.get("ctx"), c.req.valid("json"))),
  );
  app.openapi(
    createRoute(withAccess("network.manage", { method: "delete", path: "/v1/quarantine/services/{service}", tags: ["firewall"], summary: "Remove a quarantine service", request: { params: ServiceParams }, responses: { 200: json(z.object({ name: z.string(), removed: z.boolean(), installed: z.boolean() }), "Removed") } })),
    async (c) => reply(c, await d.firewall.removeService(c.get("ctx"), c.req.valid("param").service)),
  );
}
