/** Generations, the security floor and the monotonic store. */
import { createRoute, z } from "@hono/zod-openapi";
import { setFloorSchema } from "../../vtime/vtime-service.ts";
import type { ApiDeps, App } from "../context.ts";
import { body, json, reply, withAccess } from "../route-kit.ts";
import { VmNameParams } from "../schemas.ts";

const GenerationSchema = z
  .object({
    generation: z.number(),
    parentGeneration: z.number().nullable(),
    vmgenid: z.string(),
    reason: z.string(),
    snapshot: z.string().nullable(),
    sourceVmId: z.string().nullable(),
    reseed: z.enum(["seen", "not-seen", "unsupported"]).nullable(),
    createdBy: z.string(),
    createdAt: z.string(),
  })
  .openapi("Generation");

export function registerVtimeRoutes(app: App, d: ApiDeps): void {
  app.openapi(
    createRoute(withAccess("vm.read", { method: "get", path: "/v1/vms/{name}/generations", tags: ["vtime"], summary: "The VM's generation tree: every fork with its vmgenid and whether the guest reseeded", request: { params: VmNameParams }, responses: { 200: json(z.object({ vm: z.string(), current: z.number(), vmgenid: z.string(), generations: z.array(GenerationSchema) }), "Generations") } })),
    async (c) => reply(c, await d.vtime.generations(c.get("ctx"), c.req.valid("param").name)),
  );

  app.openapi(
    createRoute(withAccess("vm.read", { method: "get", path: "/v1/vms/{name}/vtime", tags: ["vtime"], summary: "The VM's monotonic store (counters, streams), namespace and security floor", request: { params: VmNameParams }, responses: { 200: json(z.object({ vm: z.string(), namespace: z.string(), floor: z.record(z.string(), z.string()), counters: z.array(z.object({ name: z.string(), value: z.number(), updatedAt: z.string() })), streams: z.array(z.object({ stream: z.string(), records: z.number() })), problems: z.array(z.string()) }), "Store") } })),
    async (c) => reply(c, await d.vtime.show(c.get("ctx"), c.req.valid("param").name)),
  );

  app.openapi(
    createRoute(withAccess("vm.modify", { method: "put", path: "/v1/vms/{name}/floor", tags: ["vtime"], summary: "Raise facts of the VM's security floor (lowering needs force and a reason)", request: { params: VmNameParams, ...body(setFloorSchema) }, responses: { 200: json(z.object({ vm: z.string(), floor: z.record(z.string(), z.string()) }), "The floor") } })),
    async (c) => reply(c, await d.vtime.setFloor(c.get("ctx"), c.req.valid("param").name, c.req.valid("json"))),
  );

  app.openapi(
    createRoute(withAccess("vm.modify", { method: "post", path: "/v1/vms/{name}/vtime/link", tags: ["vtime"], summary: "Share another VM's monotonic store (e.g. a clone continuing its parent's counters)", request: { params: VmNameParams, ...body(z.strictObject({ source: z.string().max(64) })) }, responses: { 200: json(z.object({ vm: z.string(), namespace: z.string(), sharedWith: z.string() }), "Linked") } })),
    async (c) => reply(c, await d.vtime.link(c.get("ctx"), c.req.valid("param").name, c.req.valid("json").source)),
  );
}
