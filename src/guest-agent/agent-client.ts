/**
 * Host side of the guest agent channel. One connection per running VM to QEMU's chardev socket for the
 * virtio-serial port. Requests are correlated by id and time out; replies are schema-checked; a guest that
 * floods the channel with unsolicited lines is disconnected rather than allowed to burn host CPU.
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

/** At most this many unsolicited or malformed lines per second before the host hangs up on the guest. */
const FLOOD_LIMIT_PER_SECOND = 200;

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
  private junkCount = 0;
  private junkWindowStart = Date.now();
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
      (line) => this.handleLine(line),
      (bytes) => this.junk(`guest sent an over-long line (${bytes} bytes)`),
    );
    this.socket.on("data", (d) => reader.push(d));
    this.socket.on("error", () => this.shutdown(new VigilError("VIGIL_GUEST_AGENT", "The guest agent channel failed")));
    this.socket.on("close", () => this.shutdown(new VigilError("VIGIL_GUEST_AGENT", "The guest agent channel closed (VM stopped?)")));
  }

  private junk(problem: string): void {
    const now = Date.now();
    if (now - this.junkWindowStart > 1000) {
      this.junkWindowStart = now;
      this.junkCount = 0;
    }
    if (this.problems.length < 20) this.problems.push(problem);
    if (++this.junkCount > FLOOD_LIMIT_PER_SECOND) {
      this.shutdown(new VigilError("VIGIL_GUEST_AGENT", "The guest flooded the agent channel; vigil disconnected it"));
    }
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
    const id = this.nextId++;
    // Key order id, cmd, arguments: the shell agent relies on it.
    const message = JSON.stringify({ id, cmd, ...args });
    const raw = await new Promise<unknown>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new VigilError("VIGIL_TIMEOUT", `The guest agent did not answer ${q(cmd)} within ${timeoutMs} ms`));
      }, timeoutMs);
      timer.unref(); // a guest that never answers must not keep vigil (or a test) alive
      this.pending.set(id, { resolve, reject, timer, cmd });
      this.socket.write(message + "\n");
    });
    const parsed = schema.safeParse(raw);
    if (!parsed.success) throw new VigilError("VIGIL_GUEST_AGENT", `The guest agent's answer to ${q(cmd)} is malformed: ${parsed.error.issues[0]?.message ?? "invalid"}`);
    return parsed.data;
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
   * `retryMs` (a ping written before the guest opened its port may be lost when the port opens).
   */
  async waitUntilAnswering(timeoutMs: number, retryMs = 1000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    let done = false;
    return new Promise<void>((resolve, reject) => {
      const attempt = () => {
        if (done) return;
        const left = deadline - Date.now();
        if (left <= 0) return finish(new VigilError("VIGIL_TIMEOUT", `The guest agent did not answer within ${timeoutMs} ms`));
        this.ping(Math.min(left, retryMs * 30)).then(
          () => finish(),
          (err: unknown) => {
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
