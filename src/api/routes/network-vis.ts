/** Inter-VM visibility and host port forwards (docs/network.md "Visibility", "Port forwards"). */
import { readFileSync } from "node:fs";
import { createRoute, z } from "@hono/zod-openapi";
import { VigilError } from "../../errors.ts";
import type { VisService } from "../../network/vis-service.ts";
import type { ApiDeps, App } from "../context.ts";
import { body, json, reply, withAccess } from "../route-kit.ts";
import { VmNameParams } from "../schemas.ts";

const Direction = z.object({ bytes: z.number(), packets: z.number(), errors: z.number(), dropped: z.number() });
const NicCountersSchema = z
  .object({ nic: z.string(), tap: z.string(), network: z.string(), ip: z.string(), rx: Direction.openapi({ description: "Received by the switch port: sent by the VM" }), tx: Direction.openapi({ description: "Delivered to the VM" }) })
  .openapi("NicCounters");
const CaptureSchema = z
  .object({ id: z.string(), vm: z.string(), nic: z.string(), bytes: z.number(), packets: z.number(), stoppedBy: z.string(), startedAt: z.string(), stoppedAt: z.string().nullable() })
  .openapi("Capture");
const ForwardSchema = z
  .object({ id: z.string(), vm: z.string(), nic: z.string(), guestIp: z.string(), guestPort: z.number(), listen: z.string(), createdAt: z.string(), open: z.boolean().optional() })
  .openapi("PortForward");

const MirrorBody = z.strictObject({
  nic: z.string().regex(/^[a-z][a-z0-9]{0,15}$/).optional(),
  durationMs: z.number().int().min(100).max(3_600_000),
  maxBytes: z.number().int().min(1024).max(1024 * 1024 * 1024).optional(),
  maxPackets: z.number().int().min(1).max(10_000_000).optional(),
});
const MirrorIdsBody = z.strictObject({
  nic: z.string().regex(/^[a-z][a-z0-9]{0,15}$/).optional(),
  durationMs: z.number().int().min(100).max(3_600_000),
  toIds: z.string().max(15).openapi({ description: "An interface inside vigil's netns (not a vigil tap or bridge)" }),
});
const ForwardBody = z.strictObject({
  guestPort: z.number().int().min(1).max(65_535),
  listen: z.string().max(32).openapi({ description: "127.0.0.0/8 address and port, e.g. 127.0.0.1:8080" }),
  nic: z.string().regex(/^[a-z][a-z0-9]{0,15}$/).optional(),
});
const IdParams = z.object({ id: z.string().regex(/^[A-Za-z0-9-]{1,64}$/).openapi({ param: { name: "id", in: "path" } }) });

function vis(d: ApiDeps): VisService {
  if (!d.vis) throw new VigilError("VIGIL_HOST", "The virtual network is not available on this daemon");
  return d.vis;
}

export function registerNetworkVisRoutes(app: App, d: ApiDeps): void {
  app.openapi(
    createRoute(withAccess("network.read", { method: "get", path: "/v1/vms/{name}/net/counters", tags: ["network"], summary: "Per-vNIC counters (bytes, packets, errors, drops) of the VM's plugged-in NICs; needs vm.read on the VM too", request: { params: VmNameParams }, responses: { 200: json(z.array(NicCountersSchema), "Counters") } })),
    async (c) => reply(c, await vis(d).counters(c.get("ctx"), c.req.valid("param").name)),
  );
  app.openapi(
    createRoute(withAccess("network.manage", { method: "post", path: "/v1/vms/{name}/net/mirror", tags: ["network"], summary: "Mirror one NIC's traffic to a pcap capture for a time window (answers when it is over); audited net.mirror.start/stop", request: { params: VmNameParams, ...body(MirrorBody) }, responses: { 201: json(CaptureSchema, "The finished capture") } })),
    async (c) => reply(c, await vis(d).mirror(c.get("ctx"), c.req.valid("param").name, c.req.valid("json")), 201),
  );
  app.openapi(
    createRoute(withAccess("network.manage", { method: "post", path: "/v1/vms/{name}/net/mirror-ids", tags: ["network"], summary: "Copy one NIC's traffic to an IDS interface in vigil's netns for a time window (answers when it is over); audited net.mirror.start/stop", request: { params: VmNameParams, ...body(MirrorIdsBody) }, responses: { 200: json(z.object({ vm: z.string(), nic: z.string(), tap: z.string(), target: z.string(), durationMs: z.number() }), "The window is over") } })),
    async (c) => reply(c, await vis(d).mirrorIds(c.get("ctx"), c.req.valid("param").name, c.req.valid("json"))),
  );
  app.openapi(
    createRoute(withAccess("network.read", { method: "get", path: "/v1/captures", tags: ["network"], summary: "The mirror captures", responses: { 200: json(z.array(CaptureSchema), "Captures") } })),
    async (c) => reply(c, await vis(d).captures(c.get("ctx"))),
  );
  app.openapi(
    createRoute(withAccess("network.manage", { method: "get", path: "/v1/captures/{id}", tags: ["network"], summary: "Download a finished capture (pcap); audited net.capture.download", request: { params: IdParams }, responses: { 200: { content: { "application/vnd.tcpdump.pcap": { schema: z.string() } }, description: "The pcap file" } } })),
    async (c) => {
      const path = await vis(d).captureFile(c.get("ctx"), c.req.valid("param").id);
      return c.body(readFileSync(path), 200, { "content-type": "application/vnd.tcpdump.pcap" }) as never;
    },
  );
  app.openapi(
    createRoute(withAccess("network.manage", { method: "post", path: "/v1/vms/{name}/net/forwards", tags: ["network"], summary: "Forward a host loopback address (127.0.0.0/8 only) to a guest port; persisted and re-opened at daemon start", request: { params: VmNameParams, ...body(ForwardBody) }, responses: { 201: json(ForwardSchema, "The forward") } })),
    async (c) => reply(c, await vis(d).addForward(c.get("ctx"), c.req.valid("param").name, c.req.valid("json")), 201),
  );
  app.openapi(
    createRoute(withAccess("network.read", { method: "get", path: "/v1/net/forwards", tags: ["network"], summary: "The port forwards (open: listening now)", responses: { 200: json(z.array(ForwardSchema), "Forwards") } })),
    async (c) => reply(c, await vis(d).listForwards(c.get("ctx"))),
  );
  app.openapi(
    createRoute(withAccess("network.manage", { method: "delete", path: "/v1/net/forwards/{id}", tags: ["network"], summary: "Remove a port forward", request: { params: IdParams }, responses: { 200: json(z.object({ id: z.string(), removed: z.boolean() }), "Removed") } })),
    async (c) => {
      const { id } = c.req.valid("param");
      await vis(d).removeForward(c.get("ctx"), id);
      return reply(c, { id, removed: true });
    },
  );
}
