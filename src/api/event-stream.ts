/**
 * The live events stream behind `GET /v1/events`, apart from HTTP: a bounded queue between the daemon (which
 * never waits for a client) and a client that may read slowly. Which audit records a subscriber sees is
 * `mayReadRecord` (auth/permissions.ts, the rule `GET /v1/audit` lists with too); whether it may follow a
 * request's progress is the Guard's `followProgress` (a refusal is audited `denied`). A client that falls `maxQueue` events behind is told so — one `overflow` event naming
 * the last audit record it was sent, then the stream ends — rather than silently missing records: `audit tail
 * --follow` can then resume from `GET /v1/audit?after=<lastSeq>`.
 */
import type { AuditLog } from "../audit/audit-log.ts";
import type { HashedRecord } from "../audit/chain.ts";
import type { Guard, RequestContext } from "../auth/guard.ts";
import { can, mayReadRecord } from "../auth/permissions.ts";
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
  vms: Pick<VmService, "ownerOf">;
  guard: Pick<Guard, "followProgress">;
}

/**
 * Serves one subscriber until it goes away or overflows: a `hello`, then every audit record it may read
 * (`audit`, id = seq) and, with `progressOf`, that request's progress (`progress`, only the newest per `what`).
 */
export async function serveEvents(d: EventStreamDeps, ctx: RequestContext, sink: EventSink, options: { progressOf?: string | undefined; maxQueue?: number } = {}): Promise<void> {
  const maxQueue = options.maxQueue ?? MAX_QUEUED_EVENTS;
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
  // With audit.read every record is readable (mayReadRecord): no owner is looked up per record.
  const readsAll = can(ctx.actor, "audit.read");
  const progressOf = options.progressOf;
  // Whether this subscriber may follow `progressOf` is the Guard's decision, asked until it is known: "denied"
  // (audited once) ends the following, "unknown" (nobody sent that request yet) waits for its first event.
  let following: "allowed" | "denied" | "unknown" = "unknown";
  let deciding: Promise<void> | undefined;
  const decide = (requestId: string) =>
    (deciding ??= d.guard.followProgress(ctx, requestId, d.progress.actorOf(requestId)).then((r) => {
      following = r;
      deciding = undefined;
      if (r === "denied") offProgress();
    }));
  const pushProgress = (p: ProgressEvent) => {
    // Only the newest progress matters: replace a queued one instead of growing the queue.
    const i = queue.findIndex((x) => "what" in x && x.what === p.what);
    if (i >= 0) queue[i] = p;
    else enqueue(p);
  };
  const offProgress = progressOf
    ? d.progress.subscribe((p) => {
        if (p.requestId !== progressOf || following === "denied") return;
        if (following === "allowed") return pushProgress(p);
        // Queued once allowed, in arrival order (every waiting event hangs on the same decision).
        decide(progressOf).then(
          () => following === "allowed" && pushProgress(p),
          () => undefined,
        );
      })
    : () => undefined;
  sink.onAbort(() => {
    off();
    offProgress();
    wake?.();
  });
  try {
    // A request someone else sent already is refused (and audited) at once, not at its next progress event.
    if (progressOf && d.progress.actorOf(progressOf) !== undefined) await decide(progressOf);
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
      else if (mayReadRecord(ctx.actor, r, readsAll || r.target.id === null ? undefined : await d.vms.ownerOf(r.target.id))) {
        await sink.event({ event: "audit", id: String(r.seq), data: JSON.stringify(r) });
        lastSeq = r.seq;
      }
    }
  } finally {
    off();
    offProgress();
  }
}
