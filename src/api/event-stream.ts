/**
 * The live events stream behind `GET /v1/events`, apart from HTTP: which audit records and progress events one
 * subscriber may see, and a bounded queue between the daemon (which never waits for a client) and a client
 * that may read slowly. A client that falls `maxQueue` events behind is told so — one `overflow` event naming
 * the last audit record it was sent, then the stream ends — rather than silently missing records: `audit tail
 * --follow` can then resume from `GET /v1/audit?after=<lastSeq>`.
 */
import type { AuditLog } from "../audit/audit-log.ts";
import type { HashedRecord } from "../audit/chain.ts";
import type { RequestContext } from "../auth/guard.ts";
import { can } from "../auth/permissions.ts";
import type { ProgressBus, ProgressEvent } from "../util/progress.ts";
import type { VmService } from "../vm/vm-service.ts";

/** Events queued for one slow client before it is cut off with an `overflow` event. */
export const MAX_QUEUED_EVENTS = 10_000;
const KEEP_ALIVE_MS = 15_000;

/** Where the stream writes (an SSE stream in the route; a recorder in tests). */
export interface EventSink {
  readonly aborted: boolean;
  onAbort(listener: () => void): void;
  event(e: { event: string; data: string; id?: string }): Promise<void>;
  keepAlive(): Promise<void>;
}

export interface EventStreamDeps {
  audit: Pick<AuditLog, "subscribe">;
  progress: Pick<ProgressBus, "subscribe" | "actorOf">;
  vms: Pick<VmService, "mayRead">;
}

/**
 * Whether this actor may follow the progress of that request: its own (the actor who sent it, recorded by the
 * API when it arrived), or any with the admin role. A request not (yet) known is nobody's: nothing is sent.
 */
export function mayFollowProgress(ctx: RequestContext, progress: Pick<ProgressBus, "actorOf">, requestId: string): boolean {
  if (ctx.actor.roles.includes("admin")) return true;
  return progress.actorOf(requestId) === ctx.actor.name;
}

/**
 * Serves one subscriber until it goes away or overflows: a `hello`, then every audit record it may read
 * (`audit`, id = seq) and, with `progressOf`, that request's progress (`progress`, only the newest per `what`).
 */
export async function serveEvents(d: EventStreamDeps, ctx: RequestContext, sink: EventSink, options: { progressOf?: string | undefined; maxQueue?: number } = {}): Promise<void> {
  const maxQueue = options.maxQueue ?? MAX_QUEUED_EVENTS;
  const all = can(ctx.actor, "audit.read");
  const queue: Array<HashedRecord | ProgressEvent> = [];
  let overflowed = false;
  let lastSeq: number | null = null;
  let wake: (() => void) | undefined;
  const enqueue = (e: HashedRecord | ProgressEvent) => {
    if (overflowed) return;
    if (queue.length >= maxQueue) overflowed = true;
    else queue.push(e);
    wake?.();
  };
  const off = d.audit.subscribe(enqueue);
  const progressOf = options.progressOf;
  const offProgress = progressOf
    ? d.progress.subscribe((p) => {
        if (p.requestId !== progressOf || !mayFollowProgress(ctx, d.progress, p.requestId)) return;
        // Only the newest progress matters: replace a queued one instead of growing the queue.
        const i = queue.findIndex((x) => "what" in x && x.what === p.what);
        if (i >= 0) queue[i] = p;
        else enqueue(p);
      })
    : () => undefined;
  sink.onAbort(() => {
    off();
    offProgress();
    wake?.();
  });
  try {
    await sink.event({ event: "hello", data: JSON.stringify({ user: ctx.actor.name }) });
    while (!sink.aborted) {
      if (overflowed) {
        // What was still queued is dropped with the rest: the client resumes from lastSeq, in order.
        await sink.event({ event: "overflow", data: JSON.stringify({ lastSeq, queued: maxQueue, message: `More than ${maxQueue} events were waiting for this client; the stream ends here. Records after lastSeq are in GET /v1/audit?after=<lastSeq>.` }) });
        return;
      }
      const r = queue.shift();
      if (!r) {
        await new Promise<void>((res) => {
          wake = res;
          setTimeout(res, KEEP_ALIVE_MS).unref();
        });
        wake = undefined;
        if (queue.length === 0 && !overflowed && !sink.aborted) await sink.keepAlive();
        continue;
      }
      if ("what" in r) await sink.event({ event: "progress", data: JSON.stringify(r) });
      else if (all || (await d.vms.mayRead(ctx, r.target.id))) {
        await sink.event({ event: "audit", id: String(r.seq), data: JSON.stringify(r) });
        lastSeq = r.seq;
      }
    }
  } finally {
    off();
    offProgress();
  }
}
