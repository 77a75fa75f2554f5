/**
 * Anonymous denials, aggregated (review finding 11): a request without a valid token costs a signed, fsynced
 * audit record only for the first one per source per interval; the rest of that interval become one
 * `auth.denied` record with a count when the interval ends (or at shutdown). So unauthenticated clients cannot
 * use the audit log as an amplifier, and the log still says who knocked and how often. Sources beyond
 * MAX_SOURCES share one bucket ("other"), so the table of sources is bounded too.
 */
import type { AuditEntry } from "./audit-log.ts";

export const DENIAL_INTERVAL_MS = 60_000;
export const MAX_SOURCES = 1024;

interface Window {
  start: number;
  /** Denials after the first in this window, not yet recorded. */
  suppressed: number;
  methods: Set<string>;
  paths: Set<string>;
}

export class DenialAggregator {
  private readonly windows = new Map<string, Window>();
  private readonly timer: NodeJS.Timeout;

  constructor(
    private readonly append: (e: AuditEntry) => Promise<unknown>,
    private readonly intervalMs = DENIAL_INTERVAL_MS,
    private readonly now: () => number = Date.now,
  ) {
    this.timer = setInterval(() => void this.flush(false).catch(() => undefined), Math.max(10, Math.floor(intervalMs / 2)));
    this.timer.unref();
  }

  /** Records (or counts) one unauthenticated request from `source`. */
  async deny(source: string, method: string, path: string, requestId: string): Promise<void> {
    await this.flush(false);
    const key = this.windows.has(source) || this.windows.size < MAX_SOURCES ? source : "other";
    const w = this.windows.get(key);
    if (w) {
      w.suppressed++;
      if (w.methods.size < 16) w.methods.add(method);
      if (w.paths.size < 16) w.paths.add(path);
      return;
    }
    this.windows.set(key, { start: this.now(), suppressed: 0, methods: new Set(), paths: new Set() });
    await this.append({
      actor: "anonymous",
      action: "auth.denied",
      target: { kind: "route", name: path },
      result: "denied",
      requestId,
      details: { reason: "no valid token", source: key, method, count: 1, intervalSeconds: this.intervalMs / 1000 },
    });
  }

  /** Writes the count of every ended window (all windows with `all`). */
  async flush(all: boolean): Promise<void> {
    const now = this.now();
    for (const [source, w] of [...this.windows]) {
      if (!all && now - w.start < this.intervalMs) continue;
      this.windows.delete(source);
      if (w.suppressed === 0) continue;
      await this.append({
        actor: "anonymous",
        action: "auth.denied",
        target: { kind: "route", name: [...w.paths].join(" ").slice(0, 200) },
        result: "denied",
        details: { reason: "no valid token", source, methods: [...w.methods], count: w.suppressed, since: new Date(w.start).toISOString(), until: new Date(now).toISOString(), aggregated: true },
      });
    }
  }

  async close(): Promise<void> {
    clearInterval(this.timer);
    await this.flush(true);
  }
}
