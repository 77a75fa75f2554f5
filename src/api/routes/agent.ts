/**
 * The agent protocol (docs/cluster.md): what the cluster manager asks of an agent beyond the ordinary API —
 * the host's status for heartbeats and placement, and the steps of a live migration. Only the manager may call
 * these (the cluster listener, mutual TLS, `via: "cluster"`); the VM operations inside still go through the Guard
 * for the user the manager acts for. Not part of the public OpenAPI document: the manager is the only client.
 */
import { cpus, freemem, loadavg, totalmem } from "node:os";
import type { Context } from "hono";
import type { RequestContext } from "../../auth/guard.ts";
import type { HostStatus } from "../../cluster/types.ts";
import { VigilError } from "../../errors.ts";
import type { ApiDeps, App, Env } from "../context.ts";

function managerOnly(c: Context<Env>): RequestContext {
  const ctx = c.get("ctx");
  if (ctx.actor.via !== "cluster") throw new VigilError("VIGIL_FORBIDDEN", "Only the cluster manager may call the agent protocol (over the agent's cluster listener)");
  return ctx;
}

function migrations(d: ApiDeps) {
  if (!d.migrations) throw new VigilError("VIGIL_CONFLICT", "This daemon is not a cluster agent (start it with `vigil agent`)");
  return d.migrations;
}

export function registerAgentRoutes(app: App, d: ApiDeps): void {
  app.get("/v1/agent/status", async (c) => {
    const ctx = managerOnly(c);
    const vms = await d.vms.list(ctx);
    const status: HostStatus = {
      name: d.host.name,
      memTotalMiB: Math.floor(totalmem() / 2 ** 20),
      memFreeMiB: Math.floor(freemem() / 2 ** 20),
      cpus: cpus().length,
      load1: loadavg()[0] ?? 0,
      vms: vms.map((v) => ({ id: v.id, name: v.name, state: v.state, memoryMiB: v.spec.memoryMiB, vcpus: v.spec.vcpus, owner: v.owner, storage: v.spec.storage ?? "local" })),
      version: d.host.version,
      epoch: d.clusterEpoch?.() ?? 0,
    };
    return c.json(status);
  });
  // Negotiation (docs/cluster.md): the target's QEMU binary, the source VM's running QEMU and hardware.
  app.get("/v1/agent/qemu", async (c) => {
    managerOnly(c);
    return c.json(await migrations(d).hostQemu());
  });
  app.get("/v1/agent/vms/:name/qemu", async (c) => c.json(await migrations(d).vmQemu(managerOnly(c), c.req.param("name"))));
  // A stopped VM's move (src/migration/cold-agents.ts); the disks themselves come agent to agent (daemon.ts).
  app.post("/v1/agent/cold/incoming", async (c) => c.json(await migrations(d).cold.prepareIn(managerOnly(c), await c.req.json())));
  app.post("/v1/agent/cold/outgoing", async (c) => c.json(await migrations(d).cold.startOut(managerOnly(c), await c.req.json()), 202));
  app.get("/v1/agent/cold/:id", (c) => {
    managerOnly(c);
    return c.json(migrations(d).cold.status(c.req.param("id")));
  });
  app.post("/v1/agent/cold/:id/commit", async (c) => c.json(await migrations(d).cold.commit(managerOnly(c), c.req.param("id"))));
  app.post("/v1/agent/cold/:id/release", async (c) => c.json(await migrations(d).cold.release(managerOnly(c), c.req.param("id"))));
  app.post("/v1/agent/cold/:id/abort", async (c) => {
    const body = (await c.req.json().catch(() => ({}))) as { reason?: unknown };
    return c.json(await migrations(d).cold.abort(managerOnly(c), c.req.param("id"), typeof body.reason === "string" ? body.reason.slice(0, 500) : "aborted by the manager"));
  });
  app.post("/v1/agent/ha/restart", async (c) => {
    const ctx = managerOnly(c);
    if (!d.haAgent) throw new VigilError("VIGIL_CONFLICT", "Cannot restart a VM here: this agent has no shared storage (--shared-storage DIR)", { field: "storage" });
    return c.json(await d.haAgent.restartHere(ctx, await c.req.json()));
  });
  app.get("/v1/agent/vms/:name/dossier", async (c) => c.json(await migrations(d).dossier(managerOnly(c), c.req.param("name"))));
  app.post("/v1/agent/migrations/incoming", async (c) => c.json(await migrations(d).prepareIn(managerOnly(c), await c.req.json())));
  app.post("/v1/agent/migrations/outgoing", async (c) => c.json(await migrations(d).startOut(managerOnly(c), await c.req.json()), 202));
  app.get("/v1/agent/migrations/:id", (c) => {
    managerOnly(c);
    return c.json(migrations(d).status(c.req.param("id")));
  });
  app.post("/v1/agent/migrations/:id/cancel", async (c) => {
    managerOnly(c);
    return c.json(await migrations(d).cancel(c.req.param("id")));
  });
  app.post("/v1/agent/migrations/:id/abort", async (c) => {
    managerOnly(c);
    return c.json(await migrations(d).abortIn(c.req.param("id")));
  });
}
