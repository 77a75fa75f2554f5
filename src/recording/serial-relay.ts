/**
 * The console of a recording VM. QEMU 7.2 loses typed input beyond the UART's 16-byte FIFO under record, and a
 * recording's UART is a pair of FIFOs (src/host/fifo.ts: a socket that fills makes the replay diverge). So the
 * daemon holds QEMU's serial FIFOs for the whole run — every byte QEMU writes goes into the transcript that a
 * replay is compared with — and console users connect to this relay instead, whose input is paced into the guest a
 * few bytes at a time.
 */
import { createHash } from "node:crypto";
import { closeSync, openSync, readSync, rmSync, writeSync } from "node:fs";
import { createServer, type Server, type Socket } from "node:net";
import { openChardevPipe } from "../host/fifo.ts";
import { listenPrivate } from "./paced-pipe.ts";

/**
 * Typed input is credited against what the guest shows it has read. Under record, QEMU takes bytes from the socket
 * whenever the UART looks empty but hands them to the UART only at its next checkpoint — which, for an idle guest,
 * can be long after — so the bytes read meanwhile overflow the 16-byte FIFO and are lost (measured: pacing alone,
 * even one byte per 15 ms, lost characters of a typed line). So at most INPUT_WINDOW bytes are in flight: any
 * output from the guest (a shell echoes each character) opens the window again, and so does INPUT_IDLE_MS of
 * silence (input that is not echoed: a few bytes a second); and never faster than one byte per INPUT_TICK_MS (the agent's pipe measured 20 ms as safe: paced-pipe.ts).
 */
export const INPUT_WINDOW = 4;
export const INPUT_TICK_MS = 20;
export const INPUT_IDLE_MS = 1000;
/** Typed input waiting for the guest beyond this is refused (a paste of a file is not console input). */
const MAX_PENDING_INPUT = 64 * 1024;
/** Console clients at once. */
const MAX_CLIENTS = 4;
/** A console client that has not read this much of the guest's output is cut off (the guest never waits for it). */
export const MAX_CLIENT_BACKLOG = 1024 * 1024;
/** Output held by the gate beyond this is not shown to console users at all (the transcript still has it). */
const MAX_HELD = 4 * 1024 * 1024;

/** The output gate of `--gate-output` (docs/recording.md, "Shadow"). */
export interface GateStatus {
  /** Bytes written by the guest that console users have not been shown yet. */
  heldBytes: number;
  /** The shadow has checked up to here: output written before it has been released. */
  releasedIcount: number;
  /** Why the gate is shut for good (a finding), or null. */
  shut: string | null;
  droppedBytes: number;
}

export class SerialRelay {
  private readonly clients = new Set<Socket>();
  private pending: Buffer[] = [];
  private pendingBytes = 0;
  private timer: NodeJS.Timeout | undefined;
  private transcriptFd: number;
  private written = 0;
  private closed = false;
  /** Bytes typed since the guest last wrote something, and when the last one went. */
  private inFlight = 0;
  private lastSent = 0;
  /** With the output gate: where the live VM was when each chunk arrived (stamped asynchronously), in order. */
  private stamp: (() => Promise<number>) | undefined;
  private held: { icount: number | undefined; chunk: Buffer }[] = [];
  private heldBytes = 0;
  private droppedBytes = 0;
  private releasedIcount = 0;
  private shut: string | null = null;

  private constructor(
    private readonly fromGuest: Socket,
    private readonly toGuest: Socket,
    private readonly server: Server,
    readonly relayPath: string,
    readonly transcriptPath: string,
  ) {
    this.transcriptFd = openSync(transcriptPath, "a", 0o600);
    fromGuest.on("data", (chunk: Buffer) => {
      if (this.closed) return;
      writeSync(this.transcriptFd, chunk);
      this.written += chunk.length;
      this.inFlight = 0;
      if (this.stamp) this.holdChunk(chunk, this.stamp);
      else this.show(chunk);
    });
    fromGuest.on("error", () => undefined);
    toGuest.on("error", () => undefined); // QEMU exited: the recording ends through its exit
    server.on("connection", (c) => this.accept(c));
  }

  /**
   * Opens QEMU's serial FIFOs at `pipeBase` (QEMU has started; the guest has not run) and listens for console users
   * at `relayPath` (0600).
   */
  static async open(pipeBase: string, relayPath: string, transcriptPath: string): Promise<SerialRelay> {
    const pipe = openChardevPipe(pipeBase);
    const server = createServer();
    await listenPrivate(server, relayPath, "the console of a recording").catch((err: unknown) => {
      pipe.destroy();
      throw err;
    });
    return new SerialRelay(pipe.fromGuest, pipe.toGuest, server, relayPath, transcriptPath);
  }

  private show(chunk: Buffer): void {
    for (const c of this.clients) {
      if (c.writableLength > MAX_CLIENT_BACKLOG) c.destroy();
      else c.write(chunk);
    }
  }

  /**
   * `--gate-output`: console users see the guest's output only once the shadow has checked the execution up to
   * where it was written. `stamp` reads where the live VM is (after the chunk arrived: never too early).
   */
  gate(stamp: () => Promise<number>): void {
    this.stamp = stamp;
  }

  private holdChunk(chunk: Buffer, stamp: () => Promise<number>): void {
    if (this.heldBytes + chunk.length > MAX_HELD) {
      this.droppedBytes += chunk.length;
      return;
    }
    const entry: { icount: number | undefined; chunk: Buffer } = { icount: undefined, chunk };
    this.held.push(entry);
    this.heldBytes += chunk.length;
    void stamp().then(
      (n) => {
        entry.icount = n;
        this.flush();
      },
      () => (entry.icount = Number.MAX_SAFE_INTEGER), // cannot tell where: never released
    );
  }

  /** The shadow has checked up to `icount`. */
  release(icount: number): void {
    this.releasedIcount = Math.max(this.releasedIcount, icount);
    this.flush();
  }

  /** Shuts the gate for good: nothing more is shown (a finding; the operator decides what happens to the VM). */
  hold(reason: string): void {
    this.shut ??= reason;
  }

  gateStatus(): GateStatus | null {
    return this.stamp ? { heldBytes: this.heldBytes, releasedIcount: this.releasedIcount, shut: this.shut, droppedBytes: this.droppedBytes } : null;
  }

  private flush(): void {
    if (this.shut !== null || this.closed) return;
    while (this.held.length > 0) {
      const first = this.held[0]!;
      if (first.icount === undefined || first.icount > this.releasedIcount) return;
      this.held.shift();
      this.heldBytes -= first.chunk.length;
      this.show(first.chunk);
    }
  }

  /** Bytes QEMU has written so far (all of them are in the transcript). */
  get bytes(): number {
    return this.written;
  }

  private accept(c: Socket): void {
    if (this.clients.size >= MAX_CLIENTS || this.closed) {
      c.end("vigil: too many console clients on this recording\r\n");
      return;
    }
    this.clients.add(c);
    c.on("data", (d: Buffer) => this.type(d));
    c.on("error", () => undefined);
    c.on("close", () => this.clients.delete(c));
  }

  /** Queues input for the guest, paced by the tick. */
  type(data: Buffer): void {
    if (this.pendingBytes + data.length > MAX_PENDING_INPUT) return; // dropped, like a full UART; said in the docs
    this.pending.push(Buffer.from(data));
    this.pendingBytes += data.length;
    if (!this.timer) this.timer = setInterval(() => this.tick(), INPUT_TICK_MS);
  }

  private tick(): void {
    if (this.pendingBytes === 0 || this.closed) {
      clearInterval(this.timer);
      this.timer = undefined;
      return;
    }
    if (this.inFlight >= INPUT_WINDOW) {
      if (Date.now() - this.lastSent < INPUT_IDLE_MS) return;
      this.inFlight = 0;
    }
    const all = Buffer.concat(this.pending);
    const chunk = all.subarray(0, 1);
    this.pending = all.length > 1 ? [all.subarray(1)] : [];
    this.pendingBytes = all.length - 1;
    this.inFlight++;
    this.lastSent = Date.now();
    this.toGuest.write(chunk);
  }

  /** Resolves once no typed input is waiting. */
  async drained(timeoutMs = 30_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (this.pendingBytes > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, INPUT_TICK_MS));
  }

  /** The first `bytes` of the transcript: its sha256. */
  digestOf(bytes: number): string {
    const h = createHash("sha256");
    const fd = openSync(this.transcriptPath, "r");
    try {
      const buf = Buffer.alloc(64 * 1024);
      let pos = 0;
      while (pos < bytes) {
        const n = readSync(fd, buf, 0, Math.min(buf.length, bytes - pos), pos);
        if (n === 0) break;
        h.update(buf.subarray(0, n));
        pos += n;
      }
    } finally {
      closeSync(fd);
    }
    return h.digest("hex");
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.timer);
    for (const c of this.clients) c.destroy();
    this.server.close();
    this.fromGuest.destroy();
    this.toGuest.destroy();
    rmSync(this.relayPath, { force: true });
    closeSync(this.transcriptFd);
  }
}
