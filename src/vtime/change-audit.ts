/**
 * Audit of guest changes to the vtime store, in aggregate. A guest may change its store 50 times a second; one
 * signed audit record per change would let any guest grow the audit log by millions of records a day. Instead,
 * per VM and per window (a minute): the first change of the window is recorded as itself (`vtime.incr`,
 * `vtime.cas`, `vtime.append`, as before), and the rest are counted and recorded once when the window ends, as
 * `vtime.changes` with the counts per operation, the first and last change time, and the names touched
 * (at most `MAX_NAMES`). At most two records per VM per window, however busy the guest.
 *
 * The store itself keeps every change (counters with their update time, records with theirs); the audit
 * answers "which VM changed its store, when, how much". A window still open when the daemon dies is lost from
 * the audit (not from the store); `close()` flushes it on a clean stop or when the VM's QEMU exits.
 */
import type { AuditLog } from "../audit/audit-log.ts";
import { messageOf } from "../errors.ts";
import type { Logger } from "../log.ts";

export const CHANGE_WINDOW_MS = 60_000;
/** Names (counters, streams) listed in one summary; beyond that only their number. */
export const MAX_NAMES = 32;
/** Names past MAX_NAMES are only counted, each once, up to this many (then the count says "at least"). */
const MAX_COUNTED_NAMES = 4096;

export type ChangeOp = "incr" | "cas" | "append";

interface Window {
  from: string;
  last: string;
  counts: Record<ChangeOp, number>;
  names: Set<string>;
  /** The names touched beyond the listed ones: counted, not listed. */
  otherNames: Set<string>;
  timer: NodeJS.Timeout;
}

export class VtimeChangeAudit {
  private window: Window | undefined;
  /** Audit writes in order (a summary never overtakes the first-change record it follows). */
  private tail: Promise<unknown> = Promise.resolve();

  constructor(
    private readonly audit: Pick<AuditLog, "append">,
    private readonly target: { vmId: string; vmName: string },
    private readonly log: Logger,
    private readonly windowMs = CHANGE_WINDOW_MS,
  ) {}

  /** Notes one applied change; resolves once whatever it writes to the audit log is written. */
  note(op: ChangeOp, name: string, details: Record<string, unknown>): Promise<void> {
    const now = new Date().toISOString();
    const w = this.window;
    if (!w) {
      // First change of a window: recorded as itself, now.
      this.window = {
        from: now,
        last: now,
        counts: { incr: 0, cas: 0, append: 0 },
        names: new Set(),
        otherNames: new Set(),
        timer: setTimeout(() => void this.flush(), this.windowMs).unref(),
      };
      return this.write(`vtime.${op}`, { ...details, window: { first: true, ms: this.windowMs } });
    }
    w.last = now;
    w.counts[op]++;
    if (w.names.size < MAX_NAMES || w.names.has(name)) w.names.add(name);
    else if (w.otherNames.size < MAX_COUNTED_NAMES) w.otherNames.add(name);
    return this.tail.then(() => undefined);
  }

  /** Ends the current window: one `vtime.changes` record if anything happened after its first change. */
  flush(): Promise<void> {
    const w = this.window;
    this.window = undefined;
    if (!w) return this.tail.then(() => undefined);
    clearTimeout(w.timer);
    const total = w.counts.incr + w.counts.cas + w.counts.append;
    if (total === 0) return this.tail.then(() => undefined);
    return this.write("vtime.changes", { from: w.from, to: w.last, counts: w.counts, total, names: [...w.names].sort(), ...(w.otherNames.size > 0 ? { moreNames: w.otherNames.size } : {}) });
  }

  close(): Promise<void> {
    return this.flush();
  }

  private write(action: string, details: Record<string, unknown>): Promise<void> {
    const next = this.tail.then(() =>
      this.audit.append({ actor: `vm:${this.target.vmName}`, action, target: { kind: "vm", id: this.target.vmId, name: this.target.vmName }, result: "ok", details }),
    );
    this.tail = next.catch((err: unknown) => this.log.error({ vm: this.target.vmName, action, err: messageOf(err) }, "Cannot audit vtime changes"));
    return next.then(() => undefined);
  }
}
