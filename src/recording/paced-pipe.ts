/**
 * The guest agent's socket of a recording VM. Under record, QEMU 7.2 hands bytes read from a chardev socket to the
 * UART only at its next checkpoint, so a request written at once (more than the 16-byte FIFO) loses bytes —
 * measured: a 22-byte ping written at once never answers; a 110-byte exec request written a byte every 3 ms lost bytes 4 times in 12, a byte every 20 ms never in 8. So the
 * recorder listens where the agent client connects and pipes each connection to QEMU's socket, guest → host as it
 * comes, host → guest one byte per PACE_MS. Agent requests are small; replies (which may be large) are not paced.
 */
import { chmodSync, rmSync } from "node:fs";
import { connect, createServer, type Server, type Socket } from "node:net";
import { VigilError, messageOf, q } from "../errors.ts";

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
  private readonly conns = new Set<Socket>();

  private constructor(
    private readonly server: Server,
    readonly path: string,
  ) {}

  static async listen(path: string, target: string): Promise<PacedPipe> {
    const server = createServer();
    const pipe = new PacedPipe(server, path);
    server.on("connection", (client) => pipe.join(client, target));
    await listenPrivate(server, path, "the agent of a recording");
    return pipe;
  }

  private join(client: Socket, target: string): void {
    const guest = connect(target);
    this.conns.add(client);
    let queue: Buffer = Buffer.alloc(0);
    let timer: NodeJS.Timeout | undefined;
    const end = () => {
      clearInterval(timer);
      this.conns.delete(client);
      client.destroy();
      guest.destroy();
    };
    guest.on("data", (d: Buffer) => client.write(d));
    guest.on("error", end);
    guest.on("close", end);
    client.on("error", end);
    client.on("close", end);
    client.on("data", (d: Buffer) => {
      if (queue.length + d.length > MAX_QUEUED) return end();
      queue = Buffer.concat([queue, d]);
      timer ??= setInterval(() => {
        if (queue.length === 0) {
          clearInterval(timer);
          timer = undefined;
          return;
        }
        guest.write(queue.subarray(0, 1));
        queue = queue.subarray(1);
      }, PACE_MS);
    });
  }

  close(): void {
    for (const c of this.conns) c.destroy();
    this.server.close();
    rmSync(this.path, { force: true });
  }
}
