/**
 * The console of a recording VM. QEMU 7.2 replays a serial write to its backend only if a client was connected
 * when the recording made it, and it loses typed input beyond the UART's 16-byte FIFO (docs/recording.md). So for
 * a recording the daemon holds QEMU's serial socket for the whole run — every byte QEMU writes goes into the
 * transcript that a replay is compared with — and console users connect to this relay instead, whose input is
 * paced into the guest a few bytes at a time.
 */
import { createHash } from "node:crypto";
import { closeSync, openSync, readSync, rmSync, writeSync } from "node:fs";
import { connect, createServer, type Server, type Socket } from "node:net";
import { VigilError, messageOf, q } from "../errors.ts";
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

function connectWithRetry(path: string, timeoutMs: number): Promise<Socket> {
  const deadline = Date.now() + timeoutMs;
  return new Promise((resolve, reject) => {
    const attempt = () => {
      const s = connect(path);
      s.once("connect", () => resolve(s));
      s.once("error", (err) => {
        s.destroy();
        if (Date.now() > deadline) reject(new VigilError("VIGIL_QEMU", `Cannot connect to the serial console ${q(path)}: ${messageOf(err)}`));
        else setTimeout(attempt, 50).unref();
      });
    };
    attempt();
  });
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

  private constructor(
    private readonly qemu: Socket,
    private readonly server: Server,
    readonly relayPath: string,
    readonly transcriptPath: string,
  ) {
    this.transcriptFd = openSync(transcriptPath, "a", 0o600);
    qemu.on("data", (chunk: Buffer) => {
      if (this.closed) return;
      writeSync(this.transcriptFd, chunk);
      this.written += chunk.length;
      this.inFlight = 0;
      for (const c of this.clients) c.write(chunk);
    });
    qemu.on("error", () => undefined);
    server.on("connection", (c) => this.accept(c));
  }

  /** Connects to QEMU's serial socket (before the guest runs) and listens for console users at `relayPath` (0600). */
  static async open(qemuSerialSocket: string, relayPath: string, transcriptPath: string): Promise<SerialRelay> {
    const qemu = await connectWithRetry(qemuSerialSocket, 10_000);
    const server = createServer();
    await listenPrivate(server, relayPath, "the console of a recording").catch((err: unknown) => {
      qemu.destroy();
      throw err;
    });
    return new SerialRelay(qemu, server, relayPath, transcriptPath);
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
    this.qemu.write(chunk);
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
    this.qemu.destroy();
    rmSync(this.relayPath, { force: true });
    closeSync(this.transcriptFd);
  }
}
