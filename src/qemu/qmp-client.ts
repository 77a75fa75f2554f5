/**
 * A QMP client: one long-lived connection to one QEMU's monitor socket. It negotiates capabilities, correlates
 * replies to commands by id, times commands out, and delivers asynchronous events to subscribers. QEMU runs
 * guest-facing device emulation, so its messages are bounded and shape-checked like any other peer's.
 */
import { connect, type Socket } from "node:net";
import { VigilError, messageOf, q } from "../errors.ts";
import { LineReader } from "./line-reader.ts";

/** An asynchronous QMP event, e.g. `{event: "STOP", data: {}, timestamp: {...}}`. */
export interface QmpEvent {
  event: string;
  data: Record<string, unknown>;
  timestamp: { seconds: number; microseconds: number } | undefined;
}

export interface QmpConnectOptions {
  /** How long to wait for the greeting and capabilities negotiation. */
  timeoutMs?: number;
  /** Default timeout of a command. */
  commandTimeoutMs?: number;
}

/** Replies are bounded: the largest legitimate ones (`info mtree`, `query-qmp-schema`) are well below this. */
const MAX_LINE_BYTES = 16 * 1024 * 1024;
const DEFAULT_COMMAND_TIMEOUT_MS = 30_000;

interface Pending {
  command: string;
  resolve: (value: unknown) => void;
  reject: (err: Error) => void;
  timer: NodeJS.Timeout;
}

type Listener = (event: QmpEvent) => void;

export class QmpClient {
  private nextId = 1;
  private readonly pending = new Map<string, Pending>();
  private readonly listeners = new Set<Listener>();
  private closeError: VigilError | undefined;
  /** Resolves when the connection ends, for whatever reason; never rejects. */
  readonly closed: Promise<VigilError>;
  private markClosed!: (err: VigilError) => void;

  private constructor(
    private readonly socket: Socket,
    private readonly path: string,
    private readonly commandTimeoutMs: number,
  ) {
    this.closed = new Promise((resolve) => (this.markClosed = resolve));
  }

  /** Connects, reads the greeting and leaves capabilities negotiation mode. */
  static async connect(path: string, options: QmpConnectOptions = {}): Promise<QmpClient> {
    const timeoutMs = options.timeoutMs ?? 10_000;
    const socket = connect(path);
    const client = new QmpClient(socket, path, options.commandTimeoutMs ?? DEFAULT_COMMAND_TIMEOUT_MS);
    const greeting = new Promise<void>((resolve, reject) => {
      client.onGreeting = resolve;
      client.onFailure = reject;
    });
    client.wire();
    const timer = setTimeout(
      () => client.fail(new VigilError("VIGIL_TIMEOUT", `No QMP greeting from ${q(path)} within ${timeoutMs} ms`)),
      timeoutMs,
    );
    try {
      await greeting;
      await client.execute("qmp_capabilities", undefined, { timeoutMs });
    } catch (err) {
      client.destroy();
      throw err;
    } finally {
      clearTimeout(timer);
    }
    return client;
  }

  private onGreeting: (() => void) | undefined;
  private onFailure: ((err: Error) => void) | undefined;

  private wire(): void {
    const reader = new LineReader(
      MAX_LINE_BYTES,
      (line) => this.handleLine(line),
      (bytes) => this.fail(new VigilError("VIGIL_QEMU", `QMP peer sent a line of over ${bytes} bytes; closing`)),
    );
    this.socket.on("data", (data) => reader.push(data));
    const gone = () => new VigilError("VIGIL_QEMU", "QEMU closed the QMP connection (the process has exited or was killed)");
    this.socket.on("error", (err: NodeJS.ErrnoException) =>
      this.fail(
        err.code === "ECONNRESET" || err.code === "EPIPE"
          ? gone()
          : new VigilError("VIGIL_QEMU", `QMP connection to ${q(this.path)} failed: ${messageOf(err)}`, { cause: err }),
      ),
    );
    this.socket.on("close", () => this.fail(gone()));
  }

  private handleLine(line: string): void {
    let msg: unknown;
    try {
      msg = JSON.parse(line);
    } catch {
      this.fail(new VigilError("VIGIL_QEMU", "QMP peer sent a line that is not JSON; closing"));
      return;
    }
    if (typeof msg !== "object" || msg === null || Array.isArray(msg)) return;
    const m = msg as Record<string, unknown>;
    if ("QMP" in m) {
      this.onGreeting?.();
      this.onGreeting = undefined;
      return;
    }
    if (typeof m.event === "string") {
      const event: QmpEvent = {
        event: m.event,
        data: typeof m.data === "object" && m.data !== null ? (m.data as Record<string, unknown>) : {},
        timestamp: m.timestamp as QmpEvent["timestamp"],
      };
      for (const listener of [...this.listeners]) listener(event);
      return;
    }
    const id = typeof m.id === "string" ? m.id : undefined;
    const pending = id === undefined ? undefined : this.pending.get(id);
    if (!pending || id === undefined) return; // a reply to a command that already timed out
    this.pending.delete(id);
    clearTimeout(pending.timer);
    if ("return" in m) {
      pending.resolve(m.return);
    } else {
      const error = (m.error ?? {}) as { class?: unknown; desc?: unknown };
      pending.reject(
        new VigilError("VIGIL_QEMU", `QEMU refused ${q(pending.command)}: ${String(error.desc ?? "unknown error")}`, {
          cause: error.class,
        }),
      );
    }
  }

  private fail(err: VigilError): void {
    if (this.closeError) return;
    this.closeError = err;
    this.onFailure?.(err);
    for (const [id, p] of this.pending) {
      clearTimeout(p.timer);
      p.reject(new VigilError("VIGIL_QEMU", `QMP command ${q(p.command)} failed: ${err.message}`, { cause: err }));
      this.pending.delete(id);
    }
    this.socket.destroy();
    this.markClosed(err);
  }

  /** True until the connection has ended. */
  get isOpen(): boolean {
    return this.closeError === undefined;
  }

  /** Runs one QMP command and resolves with its `return` value. */
  execute<T = unknown>(command: string, args?: Record<string, unknown>, options: { timeoutMs?: number } = {}): Promise<T> {
    if (this.closeError) {
      return Promise.reject(new VigilError("VIGIL_QEMU", `Cannot run QMP command ${q(command)}: ${this.closeError.message}`));
    }
    const id = `v${this.nextId++}`;
    const timeoutMs = options.timeoutMs ?? this.commandTimeoutMs;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new VigilError("VIGIL_TIMEOUT", `QMP command ${q(command)} got no reply within ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.set(id, { command, resolve: resolve as (v: unknown) => void, reject, timer });
      const message = args === undefined ? { execute: command, id } : { execute: command, arguments: args, id };
      this.socket.write(JSON.stringify(message) + "\n");
    });
  }

  /** Runs a human monitor command (for the few things QMP does not expose, e.g. `info registers`). */
  hmp(commandLine: string, options: { timeoutMs?: number } = {}): Promise<string> {
    return this.execute<string>("human-monitor-command", { "command-line": commandLine }, options);
  }

  /** Calls `listener` for every event from now on; returns the function that unsubscribes. */
  onEvent(listener: Listener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** Resolves with the first event named `name` (and matching `filter`) that arrives from now on. */
  waitEvent(name: string, options: { timeoutMs: number; filter?: (e: QmpEvent) => boolean }): Promise<QmpEvent> {
    return new Promise((resolve, reject) => {
      const done = (fn: () => void) => {
        clearTimeout(timer);
        off();
        fn();
      };
      const off = this.onEvent((e) => {
        if (e.event === name && (options.filter?.(e) ?? true)) done(() => resolve(e));
      });
      const timer = setTimeout(
        () => done(() => reject(new VigilError("VIGIL_TIMEOUT", `QMP event ${q(name)} did not arrive within ${options.timeoutMs} ms`))),
        options.timeoutMs,
      );
      void this.closed.then((err) => done(() => reject(err)));
    });
  }

  /** Every event from now on as an async stream; ends when the connection closes. */
  async *events(): AsyncGenerator<QmpEvent> {
    const queue: QmpEvent[] = [];
    let wake: (() => void) | undefined;
    const off = this.onEvent((e) => {
      queue.push(e);
      wake?.();
    });
    void this.closed.then(() => wake?.());
    try {
      for (;;) {
        const next = queue.shift();
        if (next) {
          yield next;
          continue;
        }
        if (!this.isOpen) return;
        await new Promise<void>((resolve) => (wake = resolve));
        wake = undefined;
      }
    } finally {
      off();
    }
  }

  private destroy(): void {
    this.fail(new VigilError("VIGIL_QEMU", "QMP connection closed by vigil"));
  }

  /** Closes the connection; QEMU keeps running. */
  async close(): Promise<void> {
    if (this.closeError) return;
    this.destroy();
    await this.closed;
  }
}
