/** Metrics (docs/web.md "Metrics"): a VM's numbers as JSON for the console's graphs, everything as Prometheus text. */
import { createRoute, z } from "@hono/zod-openapi";
import { PROMETHEUS_CONTENT_TYPE } from "../../metrics/prometheus.ts";
import type { ApiDeps, App } from "../context.ts";
import { json, reply, withAccess } from "../route-kit.ts";
import { VmNameParams } from "../schemas.ts";

const VmMetricsSchema = z
  .object({
    at: z.string(),
    running: z.boolean(),
    cpuSeconds: z.number(),
    rssBytes: z.number(),
    memoryBytes: z.number(),
    diskReadBytes: z.number().nullable(),
    diskWrittenBytes: z.number().nullable(),
    netRxBytes: z.number().nullable(),
    netTxBytes: z.number().nullable(),
  })
  .openapi("VmMetrics");

export function registerMetricsRoutes(app: App, d: ApiDeps): void {
  app.openapi(
    createRoute(withAccess("vm.read", { method: "get", path: "/v1/vms/{name}/metrics", tags: ["vms"], summary: "The VM's numbers now: QEMU's CPU seconds and RSS, configured memory, disk and NIC byte counters (null when not known); poll and take differences for rates", request: { params: VmNameParams }, responses: { 200: json(VmMetricsSchema, "Metrics") } })),
    async (c) => reply(c, await d.metrics.vm(c.get("ctx"), c.req.valid("param").name)),
  );

  app.openapi(
    createRoute(withAccess("authenticated", { method: "get", path: "/metrics", tags: ["system"], summary: "Prometheus text (format 0.0.4): series of the VMs you may read; host series with host.read", responses: { 200: { content: { [PROMETHEUS_CONTENT_TYPE]: { schema: z.string() } }, description: "Prometheus exposition" } } })),
    async (c) => c.body(await d.metrics.exposition(c.get("ctx")), 200, { "content-type": PROMETHEUS_CONTENT_TYPE }) as never,
  );
}
