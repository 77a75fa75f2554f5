/**
 * The cluster manager's read routes, each authorized through the Guard (a refusal is 403 and audited `denied`, as
 * everywhere): hosts need `host.read`; balance and consolidate plans `cluster.manage` (they describe every host's
 * load and the moves an admin would make); migrations and events are shown only for the VMs the user may read
 * (`vm.read` on the VM's owner, from its placement), host events only with `host.read`, and a user who may read
 * no VM at all is refused outright. `GET /v1/events` answers a poll (`Accept: application/json`, `?after=SEQ`)
 * with JSON and otherwise streams server-sent events (as a single host's `/v1/events` does): catch-up from the durable table after `Last-Event-ID` (or `after=`), then every
 * new event as it is committed. Each stream reads the table at its own pace, so a slow client holds no queue.
 */
import type { Context, Hono } from "hono";
import { streamSSE } from "hono/streaming";
import type { Guard, RequestContext } from "../auth/guard.ts";
import { can, readsAuditRecords, type Actor, type OwnerRef } from "../auth/permissions.ts";
import { watchEvents, type ClusterEvent, type ClusterRepository, type EventWatch, type MigrationRecord } from "../cluster/cluster-repository.ts";
import { VigilError, messageOf, q } from "../errors.ts";
import type { Db } from "../inventory/db.ts";
import type { Logger } from "../log.ts";

export interface ManagerReads {
  guard: Pick<Guard, "authorize">;
  repo: Pick<ClusterRepository, "listActiveMigrations" | "findPlacementByName" | "listEventsAfter" | "lastEventSeq">;
  /** The inventory the durable events are in (the live stream's wake-ups: NOTIFY on PostgreSQL, polling on SQLite). */
  db: Db;
  hosts(): Promise<unknown[]>;
  migration(id: string): Promise<MigrationRecord>;
  /** `minGain` as the client sent it (validated by the manager). */
  balance(minGain: string | undefined): unknown;
  consolidate(): unknown;
  log: Logger;
  /** The live stream's keep-alive period (ms); 15 s. */
  keepAliveMs?: number;
}

type Env = { Variables: { ctx: RequestContext } };
const MANAGER = { kind: "host", name: "manager" } as const;
const EVENT_BATCH = 100;

/** Events of these kinds are about the VM their subject names; every other kind is about a host. */
const isVmEvent = (e: ClusterEvent): boolean => e.kind.startsWith("vm.") || e.kind.startsWith("migration.");

/** May `actor` see event `e`, `owner` being the owner of the VM it names (undefined: no such VM any more)? */
export function mayReadClusterEvent(actor: Actor, e: ClusterEvent, owner: OwnerRef | undefined): boolean {
  if (!isVmEvent(e)) return can(actor, "host.read");
  return can(actor, "vm.read", owner);
}

/** Registers the read routes on the manager's app; `close` ends the live streams' wake-up watch. */
export function registerManagerReads<E extends Env>(app: Hono<E>, d: ManagerReads): { close(): Promise<void> } {
  const ctxOf = (c: Context<E>): RequestContext => c.get("ctx") as RequestContext;
  /** Refuses (audited) a user who may read no VM at all; the caller then filters by VM. */
  const mayReadSomeVm = async (ctx: RequestContext, action: string) => {
    if (!readsAuditRecords(ctx.actor)) await d.guard.authorize(ctx, { action, permission: "vm.read", target: MANAGER, readOnly: true });
  };
  /** The owner of a VM by name, from its placement, looked up once per request. */
  const owners = () => {
    const seen = new Map<string, Promise<OwnerRef | undefined>>();
    return (vm: string) => {
      let p = seen.get(vm);
      if (!p) seen.set(vm, (p = d.repo.findPlacementByName(vm).then((x) => x?.owner)));
      return p;
    };
  };

  app.get("/v1/hosts", async (c) => {
    await d.guard.authorize(ctxOf(c), { action: "host.list", permission: "host.read", target: MANAGER, readOnly: true });
    return c.json(await d.hosts());
  });
  app.get("/v1/cluster/balance", async (c) => {
    await d.guard.authorize(ctxOf(c), { action: "cluster.balance", permission: "cluster.manage", target: MANAGER, readOnly: true });
    return c.json(d.balance(c.req.query("minGain")));
  });
  app.get("/v1/cluster/consolidate", async (c) => {
    await d.guard.authorize(ctxOf(c), { action: "cluster.consolidate", permission: "cluster.manage", target: MANAGER, readOnly: true });
    return c.json(d.consolidate());
  });
  app.get("/v1/migrations", async (c) => {
    const ctx = ctxOf(c);
    await mayReadSomeVm(ctx, "migration.list");
    const ownerOf = owners();
    const all = await d.repo.listActiveMigrations();
    const visible = await Promise.all(all.map(async (m) => can(ctx.actor, "vm.read", await ownerOf(m.vmName))));
    return c.json(all.filter((_, i) => visible[i]));
  });
  app.get("/v1/migrations/:id", async (c) => {
    const ctx = ctxOf(c);
    const m = await d.migration(c.req.param("id"));
    const owner = (await d.repo.findPlacementByName(m.vmName))?.owner;
    await d.guard.authorize(ctx, { action: "migration.show", permission: "vm.read", target: { kind: "vm", id: m.vmId, name: m.vmName }, owner, details: { migration: m.id }, readOnly: true });
    return c.json(m);
  });

  // The live streams' wake-up: one watch for all of them (started with the first), bumping `generation`.
  let generation = 0;
  const waiters = new Set<() => void>();
  let watch: EventWatch | undefined;
  let starting: Promise<void> | undefined;
  const ensureWatch = () =>
    (starting ??= d.repo.lastEventSeq().then(
      (from) => {
        watch = watchEvents(d.db, from, () => {
          generation++;
          for (const w of [...waiters]) w();
        }, { onError: (err) => d.log.warn({ err: messageOf(err) }, "cluster event watch") });
      },
      (err: unknown) => {
        // The next stream tries again.
        starting = undefined;
        throw err;
      },
    ));
  const keepAliveMs = d.keepAliveMs ?? 15_000;

  app.get("/v1/events", async (c) => {
    const ctx = ctxOf(c);
    await mayReadSomeVm(ctx, "cluster.events");
    const ownerOf = owners();
    const visible = async (e: ClusterEvent) => mayReadClusterEvent(ctx.actor, e, isVmEvent(e) ? await ownerOf(e.subject) : undefined);
    const lastId = c.req.header("last-event-id");
    const afterQ = c.req.query("after");
    const parse = (v: string, field: string) => {
      const n = Number(v);
      if (!/^\d{1,15}$/.test(v) || !Number.isSafeInteger(n)) throw new VigilError("VIGIL_BAD_REQUEST", `Invalid ${field} ${q(v)}: an event sequence number ≥ 0`, { field });
      return n;
    };
    // A poll asks for JSON (as `call` and every API client do); anything else streams, as on a single host.
    const accept = c.req.header("accept") ?? "";
    if (accept.includes("application/json") && !accept.includes("text/event-stream")) {
      const after = afterQ === undefined ? 0 : parse(afterQ, "after");
      const batch = await d.repo.listEventsAfter(after, 500);
      const shown = await Promise.all(batch.map(visible));
      return c.json(batch.filter((_, i) => shown[i]));
    }
    // Last-Event-ID (a reconnecting EventSource) wins over after=; with neither, the stream starts at now.
    let last = lastId !== undefined ? parse(lastId, "Last-Event-ID") : afterQ !== undefined ? parse(afterQ, "after") : await d.repo.lastEventSeq();
    await ensureWatch();
    return streamSSE(c, async (stream) => {
      let wake: (() => void) | undefined;
      const waiter = () => wake?.();
      waiters.add(waiter);
      stream.onAbort(waiter);
      try {
        await stream.writeSSE({ event: "hello", data: JSON.stringify({ user: ctx.actor.name, after: last }) });
        while (!stream.aborted) {
          const seen = generation;
          const batch = await d.repo.listEventsAfter(last, EVENT_BATCH);
          for (const e of batch) {
            if (stream.aborted) return;
            last = e.seq;
            // Awaited: a client that reads slowly slows this loop (and only this one), nothing piles up.
            if (await visible(e)) await stream.writeSSE({ event: "cluster", id: String(e.seq), data: JSON.stringify(e) });
          }
          if (batch.length === EVENT_BATCH || generation !== seen) continue;
          const woke = await new Promise<boolean>((res) => {
            wake = () => res(true);
            setTimeout(() => res(false), keepAliveMs).unref();
          });
          wake = undefined;
          if (!woke && !stream.aborted) await stream.write(": keep-alive\n\n");
        }
      } finally {
        waiters.delete(waiter);
      }
    });
  });

  return {
    close: async () => {
      await starting?.catch(() => undefined);
      for (const w of [...waiters]) w();
      await watch?.close();
    },
  };
}
