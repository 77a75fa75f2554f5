/**
 * What the cluster manager passes on to its agents (docs/cluster.md "Reaching the manager"), as bytes rather than
 * parsed JSON, so a bundle or a recording's tar goes through as it does on one host:
 * - every request about one VM goes to the agent that holds it; the request body streams to the agent and the
 *   answer (a JSON object, or a bundle export of any size) streams back as it arrives, with back-pressure both ways;
 * - `POST /v1/vms/import` streams the uploaded bundle to the host `?host=` names, or the one placement picks, once
 *   every ready host trusts the others' bundle keys (a bundle one host exported imports on any);
 * - recordings, mirror captures and port forwards live on one host each but are named by id: their lists are every
 *   ready host's merged (each item with its `host`), and a request about one goes to the host whose list holds it;
 *   the stale-fleet report is merged the same way, and a fleet rescan asks every ready host;
 * - `/metrics` is every ready host's exposition merged, each series labelled with the host's cluster name.
 * The manager authenticates; each agent authorizes and audits for the user the manager names (`x-vigil-actor`).
 */
import type { Context, Hono } from "hono";
import { Readable } from "node:stream";
import type { RequestContext } from "../auth/guard.ts";
import { agentErrorOf, type RelayedAnswer } from "../cluster/agent-client.ts";
import type { DelegatedActor } from "../cluster/types.ts";
import { VigilError, q } from "../errors.ts";
import type { Logger } from "../log.ts";
import { PROMETHEUS_CONTENT_TYPE, mergeExpositions, parseExposition, renderExposition } from "../metrics/prometheus.ts";
import type { ManagerEnv } from "./manager-web.ts";

export interface RelayRequest {
  body?: Readable | undefined;
  headers: Record<string, string>;
  actor: DelegatedActor;
}

export interface ManagerForwardDeps {
  /** One exchange of bytes with the agent `host` (AgentClient.relay with the host's lease epoch). */
  relay(host: string, method: string, path: string, r: RelayRequest): Promise<RelayedAnswer>;
  /** The host holding a VM (VIGIL_VM_NOT_FOUND when none). */
  holder(vm: string): Promise<string>;
  readyHosts(): string[];
  /** Before an import: every ready host trusts the others' bundle keys (daemon/cluster-trust.ts). */
  beforeImport(): Promise<void>;
  /** Where a VM of this size would be created (VIGIL_CONFLICT when nowhere). */
  place(demand: { memoryMiB: number; vcpus: number }): string;
  setPlacement(p: { vmId: string; vmName: string; host: string; owner: string }): Promise<void>;
  deletePlacement(vmName: string): Promise<void>;
  event(kind: string, subject: string, payload: Record<string, unknown>): Promise<void>;
  toDelegated(ctx: RequestContext): DelegatedActor;
  log: Logger;
}

/** Request headers an agent needs (the body's type and size, the request id for progress, an export's output path). */
const PASSED_ON = ["content-type", "content-length", "x-request-id", "x-vigil-output"] as const;
/** Answer headers the client needs. */
const PASSED_BACK = ["content-type", "content-length", "content-disposition", "x-request-id"] as const;
/** The largest JSON list or Prometheus text read from one agent. */
const MAX_READ_BYTES = 16 * 1024 * 1024;
/** An agent's single answer to a forwarded request may take this long to move a byte (a VM start, a bundle verify). */
export const FORWARD_IDLE_MS = 300_000;

/**
 * Host-wide lists the manager merges from every ready host (`key`: the answer's array is under it), and for the
 * resources named by id that live on one host each, where a request about one item goes (`one`).
 */
const MERGED: readonly { list: string; key: string | undefined; one?: RegExp }[] = [
  { list: "/v1/recordings", key: "recordings", one: /^\/v1\/recordings\/([^/]+)(?:\/.*)?$/ },
  { list: "/v1/captures", key: undefined, one: /^\/v1\/captures\/([^/]+)$/ },
  { list: "/v1/net/forwards", key: undefined, one: /^\/v1\/net\/forwards\/([^/]+)$/ },
  // The stale-fleet report (posture/rescan.ts): every host's dormant VMs, each with its host.
  { list: "/v1/posture/stale", key: "vms" },
  // Every host's tasks (util/task-log.ts), each with its host; each host shows the user what it would alone.
  { list: "/v1/tasks", key: "tasks" },
];

export function registerManagerForwarding(app: Hono<ManagerEnv>, d: ManagerForwardDeps): void {
  const actorOf = (c: Context<ManagerEnv>) => d.toDelegated(c.get("ctx"));
  const requestOf = (c: Context<ManagerEnv>): RelayRequest => {
    const headers: Record<string, string> = {};
    for (const h of PASSED_ON) {
      const v = c.req.header(h);
      if (v !== undefined) headers[h] = v;
    }
    const raw = c.req.raw.body;
    return { headers, actor: actorOf(c), body: raw ? Readable.fromWeb(raw as import("node:stream/web").ReadableStream<Uint8Array>) : undefined };
  };

  app.post("/v1/vms/import", async (c) => {
    const url = new URL(c.req.url);
    // ?host= pins the host (the manager's own parameter, not passed on); without it, placement picks one as for a
    // create of the default size: the bundle's own size is known only once the agent has read and verified it.
    const pinned = url.searchParams.get("host");
    url.searchParams.delete("host");
    let host: string;
    if (pinned !== null) {
      if (!d.readyHosts().includes(pinned)) throw new VigilError("VIGIL_CONFLICT", `Host ${q(pinned)} cannot take VMs now (ready: ${d.readyHosts().join(", ") || "none"})`, { field: "host" });
      host = pinned;
    } else host = d.place({ memoryMiB: 256, vcpus: 1 });
    await d.beforeImport();
    const answer = await d.relay(host, "POST", url.pathname + url.search, requestOf(c));
    if (answer.status >= 400) return passBack(answer);
    const vm = JSON.parse(await readBounded(answer, host)) as { id: string; name: string; owner: string };
    await d.setPlacement({ vmId: vm.id, vmName: vm.name, host, owner: vm.owner });
    await d.event("vm.created", vm.name, { host, via: "import" });
    return c.json({ ...vm, host }, answer.status as 201);
  });

  app.get("/metrics", async (c) => {
    const actor = actorOf(c);
    const sources = await Promise.all(
      d.readyHosts().map(async (host) => {
        try {
          const answer = await d.relay(host, "GET", "/metrics", { headers: {}, actor });
          const text = await readBounded(answer, host);
          if (answer.status >= 400) throw new Error(`answered ${answer.status}: ${text.slice(0, 200)}`);
          const parsed = parseExposition(text);
          if (parsed.skipped > 0) d.log.warn({ host, skipped: parsed.skipped }, "lines of a host's /metrics were not in vigil's format");
          return { name: host, families: parsed.families };
        } catch (err) {
          // A host that cannot be scraped now has no series in this scrape (Prometheus sees them go stale), not an error for the rest.
          d.log.warn({ host, err }, "a host's /metrics could not be read");
          return { name: host, families: [] };
        }
      }),
    );
    return c.body(renderExposition(mergeExpositions(sources, "host")), 200, { "content-type": PROMETHEUS_CONTENT_TYPE });
  });

  // `vigil posture rescan` on the cluster: each ready host rescans its own dormant VMs; the outcomes together.
  app.post("/v1/posture/rescan", async (c) => {
    const actor = actorOf(c);
    const answers = await Promise.all(d.readyHosts().map(async (host) => {
      const answer = await d.relay(host, "POST", "/v1/posture/rescan", { headers: { "content-type": "application/json" }, actor, body: Readable.from([Buffer.from("{}")]) });
      const text = await readBounded(answer, host);
      if (answer.status >= 400) throw agentErrorOf(answer.status, text, `Host ${q(host)}`);
      return JSON.parse(text) as { scanned: string[]; failed: { vm: string; error: string }[] };
    }));
    return c.json({ scanned: answers.flatMap((a) => a.scanned), failed: answers.flatMap((a) => a.failed) });
  });

  for (const r of MERGED) {
    app.get(r.list, async (c) => {
      const url = new URL(c.req.url);
      const lists = await listEverywhere(c, r.list + url.search, r.key);
      return c.json(r.key ? { [r.key]: lists } : lists);
    });
    const one = r.one;
    if (!one) continue;
    app.all(`${r.list}/*`, async (c) => {
      const url = new URL(c.req.url);
      const m = one.exec(url.pathname);
      if (!m) throw new VigilError("VIGIL_NOT_FOUND", `The cluster manager has no route ${c.req.method} ${url.pathname}`);
      const id = decodeURIComponent(m[1]!);
      const items = (await listEverywhere(c, r.list, r.key)).filter((i) => i.id === id || i.name === id);
      const hosts = [...new Set(items.map((i) => i.host))];
      if (hosts.length === 0) throw new VigilError("VIGIL_NOT_FOUND", `${q(id)} is not on any ready host of this cluster (or you may not see it)`);
      if (hosts.length > 1) throw new VigilError("VIGIL_CONFLICT", `${q(id)} names items on several hosts (${hosts.join(", ")}): use the host's own API`);
      return passBack(await d.relay(hosts[0]!, c.req.method, url.pathname + url.search, requestOf(c)));
    });
  }

  // Everything else about one VM goes to the agent that holds it, for the user who asked.
  const forward = async (c: Context<ManagerEnv>): Promise<Response> => {
    const name = c.req.param("name") ?? "";
    const host = await d.holder(name);
    const url = new URL(c.req.url);
    const answer = await d.relay(host, c.req.method, url.pathname + url.search, requestOf(c));
    const what = url.pathname.split("/").slice(4).join("/") || "vm";
    if (answer.status < 400 && c.req.method !== "GET" && c.req.method !== "HEAD") {
      // Destroyed (DELETE) or purged: the VM is gone from its host, so from the placements too.
      if ((c.req.method === "DELETE" && what === "vm") || (c.req.method === "POST" && what === "purge")) await d.deletePlacement(name);
      // A change through the manager is a cluster event: open web consoles refresh on it (GET /v1/events). An export changes nothing.
      if (what !== "export") await d.event("vm.changed", name, { host, method: c.req.method, what });
    }
    return passBack(answer);
  };
  app.all("/v1/vms/:name/*", forward);
  app.all("/v1/vms/:name", forward);

  /**
   * Every ready host's list at `path` (an array, or the array under `key`), each item with its host; the first
   * refusal when no host answered with a list; a host that does not answer at all is left out (and logged).
   */
  async function listEverywhere(c: Context<ManagerEnv>, path: string, key: string | undefined): Promise<{ id?: unknown; name?: unknown; host: string }[]> {
    const actor = actorOf(c);
    const answers = await Promise.all(
      d.readyHosts().map(async (host) => {
        try {
          const answer = await d.relay(host, "GET", path, { headers: { accept: "application/json" }, actor });
          const text = await readBounded(answer, host);
          return { host, status: answer.status, text };
        } catch (err) {
          // A host that stopped answering since its last heartbeat adds nothing, as in the VM list; the rest still list.
          d.log.warn({ host, path, err }, "a host's list could not be read");
          return undefined;
        }
      }),
    ).then((all) => all.filter((a) => a !== undefined));
    const ok = answers.filter((a) => a.status < 400);
    const refused = answers.find((a) => a.status >= 400);
    if (ok.length === 0 && refused) throw agentErrorOf(refused.status, refused.text, `Host ${q(refused.host)}`);
    return ok.flatMap(({ host, text }) => {
      const body = JSON.parse(text) as unknown;
      const items = key ? (body as Record<string, unknown>)[key] : body;
      if (!Array.isArray(items)) throw new VigilError("VIGIL_HOST", `Host ${q(host)} answered ${path} with something that is not a list`);
      return (items as Record<string, unknown>[]).map((i) => ({ ...i, host }));
    });
  }
}

/** The agent's answer as the manager's: status, the headers a client needs, the body as it arrives. */
function passBack(answer: RelayedAnswer): Response {
  const headers = new Headers();
  for (const h of PASSED_BACK) {
    const v = answer.headers[h];
    if (typeof v === "string") headers.set(h, v);
  }
  const empty = answer.status === 204 || answer.status === 304;
  if (empty) answer.body.resume();
  return new Response(empty ? null : (Readable.toWeb(answer.body) as ReadableStream<Uint8Array>), { status: answer.status, headers });
}

/** An answer's body as text, refusing one over MAX_READ_BYTES. */
async function readBounded(answer: RelayedAnswer, host: string): Promise<string> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of answer.body) {
    size += (chunk as Buffer).length;
    if (size > MAX_READ_BYTES) {
      answer.body.destroy();
      throw new VigilError("VIGIL_HOST", `Host ${q(host)} sent an answer larger than ${MAX_READ_BYTES} bytes`);
    }
    chunks.push(chunk as Buffer);
  }
  return Buffer.concat(chunks).toString("utf8");
}

