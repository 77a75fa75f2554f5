/**
 * The guest agent's channel of a recording VM. Under record, QEMU 7.2 hands bytes read from a chardev to the UART
 * only at its next checkpoint, so a request written at once (more than the 16-byte FIFO) loses bytes — measured: a
 * 22-byte ping written at once never answers; a 110-byte exec request written a byte every 3 ms lost bytes 4 times
 * in 12, a byte every 20 ms never in 8. And the UART is a pair of FIFOs the daemon must always drain
 * (src/host/fifo.ts). So the recorder holds QEMU's agent FIFOs for the whole run and listens where the agent client
 * connects: one client at a time, guest → host as it comes (dropped while no client is there, as QEMU drops writes
 * to a socket nobody is connected to), host → guest one byte per PACE_MS. Agent requests are small; replies (which
 * may be large) are not paced.
 */
import { chmodSync, rmSync } from "node:fs";
import { createServer, type Server, type Socket } from "node:net";
import { VigilError, messageOf, q } from "../errors.ts";
import { openChardevPipe } from "../host/fifo.ts";

export const PACE_MS = 20;
/**
 * Listens on the unix socket `path` for `what` (a stale one is removed) and restricts it to 0600 before anyone is
 * told its name (umask-independent). Shared by the agent's pipe and the console relay of a recording.
 */
export async function listenPrivate(server: Server, path: string, what: string): Promise<void> {
  rmSync(path, { force: true });
  try {
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(path, () => resolve());
    });
    chmodSync(path, 0o600);
  } catch (err) {
    server.close();
    throw new VigilError("VIGIL_HOST", `Cannot listen on ${q(path)} for ${what}: ${messageOf(err)}`);
  }
}

/** Bytes queued towards the guest beyond this close the connection (an agent request is far smaller). */
const MAX_QUEUED = 256 * 1024;

export class PacedPipe {
  private client: Socket | undefined;
  private queue: Buffer = Buffer.alloc(0);
  private timer: NodeJS.Timeout | undefined;

  private constructor(
    private readonly server: Server,
    readonly path: string,
    private readonly fromGuest: Socket,
    private readonly toGuest: Socket,
  ) {
    fromGuest.on("data", (d: Buffer) => this.client?.write(d));
    fromGuest.on("error", () => undefined);
    toGuest.on("error", () => undefined); // QEMU exited: the recording ends through its exit
    server.on("connection", (c) => this.join(c));
  }

  /** Opens QEMU's agent FIFOs at `pipeBase` (QEMU has started) and listens for the agent client at `path` (0600). */
  static async listen(path: string, pipeBase: string): Promise<PacedPipe> {
    const pipe = openChardevPipe(pipeBase);
    const server = createServer();
    await listenPrivate(server, path, "the agent of a recording").catch((err: unknown) => {
      pipe.destroy();
      throw err;
    });
    return new PacedPipe(server, path, pipe.fromGuest, pipe.toGuest);
  }

  private join(c: Socket): void {
    // The UART is one byte stream: a second client would read the first one's replies.
    if (this.client) {
      c.destroy();
      return;
    }
    this.client = c;
    const end = () => {
      if (this.client !== c) return;
      this.client = undefined;
      // What the client had not yet sent is not sent (a request cut in half would only confuse the agent more).
      this.queue = Buffer.alloc(0);
      c.destroy();
    };
    c.on("error", end);
    c.on("close", end);
    c.on("data", (d: Buffer) => {
      if (this.queue.length + d.length > MAX_QUEUED) return end();
      this.queue = Buffer.concat([this.queue, d]);
      this.timer ??= setInterval(() => this.tick(), PACE_MS);
    });
  }

  private tick(): void {
    if (this.queue.length === 0) {
      clearInterval(this.timer);
      this.timer = undefined;
      return;
    }
    this.toGuest.write(this.queue.subarray(0, 1));
    this.queue = this.queue.subarray(1);
  }

  close(): void {
    clearInterval(this.timer);
    this.client?.destroy();
    this.client = undefined;
    this.server.close();
    this.fromGuest.destroy();
    this.toGuest.destroy();
    rmSync(this.path, { force: true });
  }
}
