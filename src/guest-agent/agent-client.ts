/**
 * Host side of the guest agent channel. One connection per running VM to QEMU's chardev socket for the
 * virtio-serial port. Requests are correlated by id and time out; replies are schema-checked; a guest that
 * floods the channel is disconnected rather than allowed to burn host CPU. Every line the guest sends counts
 * against the limit — valid `ready` events and answers included — because each one costs a `JSON.parse` on the
 * daemon's only event loop; vigil's own traffic (one request at a time, at most one ping outstanding) stays
 * far below it.
 */
import { connect, type Socket } from "node:net";
import type { z } from "zod";
import { VigilError, q } from "../errors.ts";
import { LineReader } from "../qemu/line-reader.ts";
import {
  MAX_AGENT_LINE_BYTES,
  agentArgSchema,
  execResultSchema,
  fsfreezeResultSchema,
  infoResultSchema,
  pingResultSchema,
  psResultSchema,
  readyEventSchema,
  replySchema,
} from "./protocol.ts";

/** At most this many lines (of any kind) per second before the host hangs up on the guest. */
export const FLOOD_LIMIT_PER_SECOND = 200;
/**
 * And at most this many bytes of lines per second: 200 lines of 200 KiB would still be 40 MB/s of parsing. The
 * largest honest answer (an exec with 2 × 64 KiB of output, base64) is under 256 KiB, one at a time.
 */
export const FLOOD_BYTES_PER_SECOND = 8 * 1024 * 1024;

interface Pending {
  resolve: (result: unknown) => void;
  reject: (err: Error) => void;
  timer: NodeJS.Timeout;
  cmd: string;
}

export class AgentClient {
  private nextId = 1;
  private readonly pending = new Map<number, Pending>();
  private readyListeners = new Set<() => void>();
  private closedError: VigilError | undefined;
  private lineCount = 0;
  private lineBytes = 0;
  private lineWindowStart = Date.now();
  /** Problems seen on the channel (malformed lines, floods), for the VM's event log. */
  readonly problems: string[] = [];

  private constructor(private readonly socket: Socket) {}

  /** Connects to QEMU's side of the channel. The guest need not be up yet: requests queue in the socket. */
  static connect(path: string, timeoutMs = 5000): Promise<AgentClient> {
    return new Promise((resolve, reject) => {
      const socket = connect(path);
      const timer = setTimeout(() => {
        socket.destroy();
        reject(new VigilError("VIGIL_TIMEOUT", `Cannot connect to the guest agent channel within ${timeoutMs} ms`));
      }, timeoutMs);
      socket.once("connect", () => {
        clearTimeout(timer);
        const client = new AgentClient(socket);
        client.wire();
        resolve(client);
      });
      socket.once("error", (err) => {
        clearTimeout(timer);
        reject(new VigilError("VIGIL_GUEST_AGENT", `Cannot connect to the guest agent channel: ${err.message}`, { cause: err }));
      });
    });
  }

  private wire(): void {
    const reader = new LineReader(
      MAX_AGENT_LINE_BYTES,
      (line) => {
        if (this.countLine(line.length)) this.handleLine(line);
      },
      (bytes) => {
        if (this.countLine(bytes)) this.junk(`guest sent an over-long line (${bytes} bytes)`);
      },
    );
    this.socket.on("data", (d) => reader.push(d));
    this.socket.on("error", () => this.shutdown(new VigilError("VIGIL_GUEST_AGENT", "The guest agent channel failed")));
    this.socket.on("close", () => this.shutdown(new VigilError("VIGIL_GUEST_AGENT", "The guest agent channel closed (VM stopped?)")));
  }

  /** Counts one line from the guest; false (and the channel is cut) once the guest exceeds a limit. */
  private countLine(bytes: number): boolean {
    if (this.closedError) return false;
    const now = Date.now();
    if (now - this.lineWindowStart > 1000) {
      this.lineWindowStart = now;
      this.lineCount = 0;
      this.lineBytes = 0;
    }
    this.lineBytes += bytes;
    const over =
      ++this.lineCount > FLOOD_LIMIT_PER_SECOND ? `more than ${FLOOD_LIMIT_PER_SECOND} lines` : this.lineBytes > FLOOD_BYTES_PER_SECOND ? `more than ${FLOOD_BYTES_PER_SECOND} bytes` : undefined;
    if (over) {
      this.problems.push(`guest sent ${over} in a second`); // once: the channel is cut now
      this.shutdown(new VigilError("VIGIL_GUEST_AGENT", "The guest flooded the agent channel; vigil disconnected it"));
      return false;
    }
    return true;
  }

  private junk(problem: string): void {
    if (this.problems.length < 20) this.problems.push(problem);
  }

  private handleLine(line: string): void {
    let msg: unknown;
    try {
      msg = JSON.parse(line);
    } catch {
      return this.junk("guest sent a line that is not JSON");
    }
    if (readyEventSchema.safeParse(msg).success) {
      for (const l of [...this.readyListeners]) l();
      return;
    }
    const reply = replySchema.safeParse(msg);
    if (!reply.success) return this.junk("guest sent a message of unknown shape");
    const p = this.pending.get(reply.data.id);
    if (!p) return this.junk(`guest answered request ${reply.data.id}, which is not pending`);
    this.pending.delete(reply.data.id);
    clearTimeout(p.timer);
    if (reply.data.ok) p.resolve(reply.data.result);
    else p.reject(new VigilError("VIGIL_GUEST_AGENT", `The guest agent refused ${q(p.cmd)}: ${reply.data.error}`));
  }

  private shutdown(err: VigilError): void {
    if (this.closedError) return;
    this.closedError = err;
    for (const [id, p] of this.pending) {
      clearTimeout(p.timer);
      p.reject(err);
      this.pending.delete(id);
    }
    this.socket.destroy();
  }

  get isOpen(): boolean {
    return this.closedError === undefined;
  }

  /** Calls `listener` whenever the agent announces it has (re)started. */
  onReady(listener: () => void): () => void {
    this.readyListeners.add(listener);
    return () => this.readyListeners.delete(listener);
  }

  /** Sends a request and validates the reply against `schema`. Arguments are re-checked here, at the edge. */
  async request<S extends z.ZodType>(cmd: string, args: Record<string, string | readonly string[]>, schema: S, timeoutMs: number): Promise<z.output<S>> {
    if (this.closedError) throw this.closedError;
    for (const [k, v] of Object.entries(args)) {
      for (const s of Array.isArray(v) ? v : [v]) {
        const ok = agentArgSchema.safeParse(s);
        if (!ok.success) throw new VigilError("VIGIL_BAD_REQUEST", `Invalid agent argument ${q(k)}: ${q(s)} may contain only letters, digits and ._/=:,+@-`, { field: k });
      }
    }
    const raw = await this.send(cmd, args, timeoutMs).answer;
    const parsed = schema.safeParse(raw);
    if (!parsed.success) throw new VigilError("VIGIL_GUEST_AGENT", `The guest agent's answer to ${q(cmd)} is malformed: ${parsed.error.issues[0]?.message ?? "invalid"}`);
    return parsed.data;
  }

  /** Writes one request; `answer` settles with the raw result, an error, or a timeout. */
  private send(cmd: string, args: Record<string, string | readonly string[]>, timeoutMs: number): { id: number; answer: Promise<unknown> } {
    const id = this.nextId++;
    // Key order id, cmd, arguments: the shell agent relies on it.
    const message = JSON.stringify({ id, cmd, ...args });
    const answer = new Promise<unknown>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new VigilError("VIGIL_TIMEOUT", `The guest agent did not answer ${q(cmd)} within ${timeoutMs} ms`));
      }, timeoutMs);
      timer.unref(); // a guest that never answers must not keep vigil (or a test) alive
      this.pending.set(id, { resolve, reject, timer, cmd });
      this.socket.write(message + "\n");
    });
    return { id, answer };
  }

  /** Gives up on a pending request (its late answer, if any, is then a line about a request not pending). */
  private abandon(id: number, err: VigilError): void {
    const p = this.pending.get(id);
    if (!p) return;
    this.pending.delete(id);
    clearTimeout(p.timer);
    p.reject(err);
  }

  /** Number of requests written and not yet answered, failed or timed out (for tests and diagnostics). */
  get pendingCount(): number {
    return this.pending.size;
  }

  ping(timeoutMs = 2000) {
    return this.request("ping", {}, pingResultSchema, timeoutMs);
  }
  info(timeoutMs = 5000) {
    return this.request("info", {}, infoResultSchema, timeoutMs);
  }
  ps(timeoutMs = 15000) {
    return this.request("ps", {}, psResultSchema, timeoutMs);
  }
  exec(argv: readonly string[], timeoutMs = 35000) {
    return this.request("exec", { argv }, execResultSchema, timeoutMs);
  }
  fsfreeze(action: "freeze" | "thaw", timeoutMs = 10000) {
    return this.request("fsfreeze", { action }, fsfreezeResultSchema, timeoutMs);
  }

  /**
   * Resolves once the agent answers a ping: one is sent now, on every "ready" announcement, and every
   * `retryMs` (a ping written before the guest opened its port may be lost when the port opens). At most one
   * ping is outstanding: a new attempt abandons the previous ping first, so a guest repeating `ready` costs
   * one timer, not one per line.
   */
  async waitUntilAnswering(timeoutMs: number, retryMs = 1000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    let done = false;
    let outstanding: number | undefined;
    return new Promise<void>((resolve, reject) => {
      const attempt = () => {
        if (done) return;
        if (this.closedError) return finish(this.closedError);
        const left = deadline - Date.now();
        if (left <= 0) return finish(new VigilError("VIGIL_TIMEOUT", `The guest agent did not answer within ${timeoutMs} ms`));
        if (outstanding !== undefined) this.abandon(outstanding, new VigilError("VIGIL_TIMEOUT", "A newer ping replaced this one"));
        const { id, answer } = this.send("ping", {}, Math.min(left, retryMs * 30));
        outstanding = id;
        answer.then(
          (raw) => {
            if (outstanding === id) outstanding = undefined;
            if (pingResultSchema.safeParse(raw).success) finish();
          },
          (err: unknown) => {
            if (outstanding === id) outstanding = undefined;
            if (!this.isOpen) finish(err instanceof Error ? err : new Error(String(err)));
          },
        );
      };
      const interval = setInterval(attempt, retryMs);
      const off = this.onReady(attempt);
      const finish = (err?: Error) => {
        if (done) return;
        done = true;
        clearInterval(interval);
        off();
        if (outstanding !== undefined) this.abandon(outstanding, new VigilError("VIGIL_TIMEOUT", "No longer waited for"));
        if (err) reject(err);
        else resolve();
      };
      attempt();
    });
  }

  close(): void {
    this.shutdown(new VigilError("VIGIL_GUEST_AGENT", "The guest agent channel was closed by vigil"));
  }
}
