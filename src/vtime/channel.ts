/**
 * The host end of one VM's vtime channel: connects to QEMU's socket for the virtio-serial port, answers the
 * guest's requests from the monotonic store under the VM's namespace, and audits its changes (in aggregate: see
 * change-audit.ts). A guest that
 * sends junk or floods is cut off (and reconnected a little later) without touching any other VM; a request
 * that arrives while the daemon is away simply waits in the channel, and the guest's client retries with the
 * same rid if an answer was lost.
 */
import { connect, type Socket } from "node:net";
import type { AuditLog } from "../audit/audit-log.ts";
import { VigilError, messageOf } from "../errors.ts";
import type { Logger } from "../log.ts";
import { LineReader } from "../qemu/line-reader.ts";
import { MAX_VTIME_LINE_BYTES, vtimeRequestSchema, type VtimeRequest } from "./protocol.ts";
import { VtimeChangeAudit } from "./change-audit.ts";
import type { MonotonicStore } from "./store.ts";

/** Guest lines per second beyond which the channel is cut (junk and valid requests alike). */
const FLOOD_PER_SECOND = 500;
/** How long a flooding guest stays cut off. */
const PENALTY_MS = 2000;
/** Changes per second a guest may make: each is durable and audited, so the store is not a free log. */
const CHANGES_PER_SECOND = 50;

/**
 * Test hook, for the integration test that kills the daemon between a change's commit and its answer: while
 * this is set, requests about the counter of that name are executed (committed, audited) and logged, but not
 * answered. Read once at start; never set in production.
 */
const HOLD_ANSWERS_OF = process.env.VIGIL_TEST_VTIME_HOLD_ANSWERS;

export interface ChannelTarget {
  vmId: string;
  vmName: string;
  /** The VM's store namespace; asked once, and again after `relink()`. */
  namespace: () => Promise<string>;
}

export class VtimeChannel {
  private socket: Socket | undefined;
  private closed = false;
  private linesThisSecond = 0;
  private windowStart = Date.now();
  private queue: Promise<void> = Promise.resolve();
  /** Bumped when the channel is cut: requests queued before the cut are dropped, not answered. */
  private epoch = 0;
  private cutOff = false;
  private changesThisSecond = 0;
  private ns: string | undefined;
  private changeWindow = Date.now();
  /** Problems seen (malformed lines, floods), newest last, bounded. */
  readonly problems: string[] = [];
  private readonly changes: VtimeChangeAudit;

  constructor(
    private readonly path: string,
    private readonly target: ChannelTarget,
    private readonly store: MonotonicStore,
    audit: Pick<AuditLog, "append">,
    private readonly log: Logger,
    options: { auditWindowMs?: number; clock?: () => number } = {},
  ) {
    this.changes = new VtimeChangeAudit(audit, target, log, options.auditWindowMs);
    this.now = options.clock ?? Date.now;
    this.windowStart = this.now();
    this.changeWindow = this.now();
  }

  /** The rate limits' clock; tests pass a frozen one so a loaded machine cannot stretch a second. */
  private readonly now: () => number;

  open(): void {
    if (this.closed) return;
    const s = connect(this.path);
    this.socket = s;
    const reader = new LineReader(MAX_VTIME_LINE_BYTES, (line) => this.onLine(line), (n) => this.problem(`over-long line (${n} bytes)`));
    s.on("data", (d) => reader.push(d));
    s.on("error", () => undefined);
    s.on("close", () => {
      if (this.socket === s) this.socket = undefined;
    });
  }

  private problem(p: string): void {
    if (this.problems.length >= 20) this.problems.shift();
    this.problems.push(p);
  }

  private onLine(line: string): void {
    if (this.cutOff) return;
    const now = this.now();
    if (now - this.windowStart >= 1000) {
      this.windowStart = now;
      this.linesThisSecond = 0;
    }
    if (++this.linesThisSecond > FLOOD_PER_SECOND) {
      this.problem("flood: channel cut off");
      this.log.warn({ vm: this.target.vmName }, "vtime channel flooded by the guest; cutting it off");
      this.epoch++;
      this.cutOff = true;
      this.socket?.destroy();
      setTimeout(() => {
        this.cutOff = false;
        this.open();
      }, PENALTY_MS).unref();
      return;
    }
    // One request at a time, in order: answers go back in the order asked.
    const epoch = this.epoch;
    this.queue = this.queue.then(() => (epoch === this.epoch ? this.handle(line) : undefined));
  }

  private async handle(line: string): Promise<void> {
    let raw: unknown;
    try {
      raw = JSON.parse(line);
    } catch {
      this.problem("a line that is not JSON");
      return this.reply({ ok: false, error: "not JSON" });
    }
    const parsed = vtimeRequestSchema.safeParse(raw);
    if (!parsed.success) {
      const issue = parsed.error.issues[0];
      const rid = typeof (raw as { rid?: unknown })?.rid === "string" && /^[A-Za-z0-9-]{1,64}$/.test((raw as { rid: string }).rid) ? (raw as { rid: string }).rid : null;
      this.problem("an invalid request");
      return this.reply({ rid, ok: false, error: `invalid request: ${issue ? `${issue.path.join(".") || "request"} ${issue.message}` : "malformed"}` });
    }
    const req = parsed.data;
    try {
      const result = await this.execute(req);
      if (HOLD_ANSWERS_OF !== undefined && "name" in req && req.name === HOLD_ANSWERS_OF) {
        this.log.warn({ vm: this.target.vmName, op: req.op, name: req.name, rid: req.rid, result }, "vtime answer held (test hook VIGIL_TEST_VTIME_HOLD_ANSWERS)");
        return;
      }
      this.reply({ rid: req.rid, ok: true, ...result });
    } catch (err) {
      this.reply({ rid: req.rid, ok: false, error: err instanceof VigilError ? err.message : "internal error" });
      if (!(err instanceof VigilError)) this.log.error({ vm: this.target.vmName, err: messageOf(err) }, "vtime request failed");
    }
  }

  private async execute(req: VtimeRequest): Promise<Record<string, unknown>> {
    if (req.op === "incr" || req.op === "cas" || req.op === "append") {
      const now = this.now();
      if (now - this.changeWindow >= 1000) {
        this.changeWindow = now;
        this.changesThisSecond = 0;
      }
      if (++this.changesThisSecond > CHANGES_PER_SECOND) throw new VigilError("VIGIL_BUSY", `rate limited: at most ${CHANGES_PER_SECOND} changes per second`);
    }
    this.ns ??= await this.target.namespace();
    const ns = this.ns;
    switch (req.op) {
      case "ping":
        return {};
      case "time":
        return { unixMs: this.store.clock() };
      case "read":
        return { value: await this.store.read(ns, req.name) };
      case "records":
        return { records: await this.store.records(ns, req.stream, req.after, req.limit) };
      case "incr": {
        const value = await this.store.incr(ns, req.name, req.by, req.rid);
        await this.changes.note("incr", req.name, { name: req.name, value });
        return { value };
      }
      case "cas": {
        const r = await this.store.cas(ns, req.name, req.expect, req.value, req.rid);
        if (r.ok) await this.changes.note("cas", req.name, { name: req.name, value: r.value });
        return r.ok ? { value: r.value } : { conflict: true, value: r.value };
      }
      case "append": {
        const seq = await this.store.append(ns, req.stream, req.data, req.rid);
        await this.changes.note("append", req.stream, { stream: req.stream, seq });
        return { seq };
      }
    }
  }

  private reply(obj: Record<string, unknown>): void {
    this.socket?.write(JSON.stringify(obj) + "\n");
  }

  /** The VM's namespace changed (a link): look it up again for the next request. */
  relink(): void {
    this.ns = undefined;
  }

  /** Stops serving; resolves once the open audit window (if any) is written. */
  close(): Promise<void> {
    this.closed = true;
    this.socket?.destroy();
    return this.changes.close();
  }
}
