/** vigil networks (the switch, docs/network.md): list, create, show with the NICs plugged in, delete. */
import { createRoute, z } from "@hono/zod-openapi";
import { createNetworkSchema } from "../../network/network-service.ts";
import type { ApiDeps, App } from "../context.ts";
import { body, json, reply, withAccess } from "../route-kit.ts";

const NetworkSchema = z
  .object({
    name: z.string(),
    cidr: z.string(),
    gateway: z.string(),
    bridge: z.string(),
    dhcp: z.boolean(),
    nat: z.boolean(),
    createdAt: z.string(),
    span: z.object({ vni: z.number(), peers: z.array(z.string()), pool: z.object({ first: z.string(), last: z.string() }), device: z.string() }).optional().openapi({ description: "A network spanning hosts over VXLAN (set by the cluster manager)" }),
  })
  .openapi("Network");

const AttachedNicSchema = z
  .object({ vmId: z.string(), vmName: z.string(), nic: z.string(), network: z.string(), bridge: z.string(), tap: z.string(), mac: z.string(), ip: z.string(), labels: z.record(z.string(), z.string()) })
  .openapi("AttachedNic");

const NetworkNameParams = z.object({ name: z.string().max(64).openapi({ param: { name: "name", in: "path" }, example: "lab" }) });

export function registerNetworkRoutes(app: App, d: ApiDeps): void {
  app.openapi(
    createRoute(withAccess("network.read", { method: "get", path: "/v1/networks", tags: ["network"], summary: "vigil networks on this host", responses: { 200: json(z.object({ networks: z.array(NetworkSchema) }), "Networks") } })),
    async (c) => reply(c, { networks: await d.network.list(c.get("ctx")) }),
  );

  app.openapi(
    createRoute(withAccess("network.manage", { method: "post", path: "/v1/networks", tags: ["network"], summary: "Create a network: a bridge in vigil's netns with an IPv4 range (/16-/29) and, unless dhcp is false, a DHCP server for its NICs; nat: true lets its traffic out through vigil's NAT uplink", request: body(createNetworkSchema), responses: { 201: json(NetworkSchema, "Created") } })),
    // span is the manager's (docs/cluster.md "Networks across hosts (VXLAN)"): accepted only over the cluster transport.
    async (c) => reply(c, await d.network.create(c.get("ctx"), c.req.valid("json"), { cluster: c.env?.transport === "cluster" }), 201),
  );

  app.openapi(
    createRoute(withAccess("network.read", { method: "get", path: "/v1/networks/{name}", tags: ["network"], summary: "A network and the NICs plugged into it now (VM, IP, MAC, tap)", request: { params: NetworkNameParams }, responses: { 200: json(NetworkSchema.extend({ attached: z.array(AttachedNicSchema), dhcpRunning: z.boolean(), uplink: z.object({ vigilDevice: z.string(), hostDevice: z.string(), linkNet: z.string().nullable() }).nullable() }), "Network") } })),
    async (c) => reply(c, await d.network.get(c.get("ctx"), c.req.valid("param").name)),
  );

  app.openapi(
    createRoute(withAccess("network.manage", { method: "delete", path: "/v1/networks/{name}", tags: ["network"], summary: "Delete a network (refused while a VM has a NIC on it); the last one takes vigil's netns along", request: { params: NetworkNameParams }, responses: { 200: json(z.object({ deleted: z.string() }), "Deleted") } })),
    async (c) => {
      const { name } = c.req.valid("param");
      await d.network.delete(c.get("ctx"), name);
      return reply(c, { deleted: name });
    },
  );
}
