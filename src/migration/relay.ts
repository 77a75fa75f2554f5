/**
 * Byte relays between a jailed QEMU's unix sockets and the other host. A jailed QEMU has no network (its netns is
 * empty, docs/jail.md), so each migration channel (the RAM stream, the NBD disk mirror) goes
 *   source QEMU → unix socket in its run dir → source agent → TCP → target agent → unix socket → target QEMU.
 * The bytes are QEMU's own TLS end to end (ephemeral certificates, docs/cluster.md): the agents carry ciphertext
 * they cannot read or alter undetected, so the relays need no TLS of their own. Each relay is owned by one
 * migration and closed with it; a relay that is closed ends every connection it carries.
 */
import { chmodSync, chownSync, rmSync } from "node:fs";
import { connect, createServer, type Server, type Socket } from "node:net";
import { VigilError, messageOf, q } from "../errors.ts";

export interface Relay {
  /** What the listener is bound to: a unix path, or the TCP port actually bound. */
  readonly where: string;
  readonly port: number;
  /** Bytes carried towards the far side, all connections. */
  readonly bytes: () => number;
  close(): Promise<void>;
}

/** How long a connection may take to reach its far side before the relay gives up on it. */
const CONNECT_TIMEOUT_MS = 10_000;
/** At most this many channels at once per relay: a migration needs one (RAM) or one per disk (NBD). */
const MAX_CONNECTIONS = 16;

function pipeTo(client: Socket, open: () => Socket, count: (n: number) => void, live: Set<Socket>): void {
  const far = open();
  live.add(client);
  live.add(far);
  const timer = setTimeout(() => far.destroy(new Error("connect timeout")), CONNECT_TIMEOUT_MS);
  far.once("connect", () => clearTimeout(timer));
  client.on("data", (b: Buffer) => count(b.length));
  client.pipe(far);
  far.pipe(client);
  const end = () => {
    clearTimeout(timer);
    client.destroy();
    far.destroy();
    live.delete(client);
    live.delete(far);
  };
  client.on("error", end).on("close", end);
  far.on("error", end).on("close", end);
}

function listen(server: Server, where: string | { host: string; port: number }, what: string): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once("error", (err) => reject(new VigilError("VIGIL_HOST", `Cannot listen for the migration on ${what}: ${messageOf(err)}`, { cause: err })));
    if (typeof where === "string") server.listen(where, () => resolve());
    else server.listen(where.port, where.host, () => resolve());
  });
}

function relayOver(server: Server, where: string, port: number, live: Set<Socket>, counter: { n: number }, onClose: () => void): Relay {
  return {
    where,
    port,
    bytes: () => counter.n,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of live) s.destroy();
        live.clear();
        server.close(() => {
          onClose();
          resolve();
        });
      }),
  };
}

/**
 * Target side: a TCP listener on the agent's cluster address; each connection is joined to `unixPath` (a socket
 * the incoming QEMU listens on). `allowFrom`, when given, is the only peer address accepted (the source agent).
 */
export async function tcpToUnix(host: string, unixPath: string, allowFrom?: string): Promise<Relay> {
  const live = new Set<Socket>();
  const counter = { n: 0 };
  const server = createServer((client) => {
    const peer = client.remoteAddress?.replace(/^::ffff:/, "");
    if ((allowFrom !== undefined && peer !== allowFrom) || live.size >= MAX_CONNECTIONS * 2) return void client.destroy();
    pipeTo(client, () => connect(unixPath), (n) => (counter.n += n), live);
  });
  await listen(server, { host, port: 0 }, `${host}:0`);
  const addr = server.address();
  const port = addr && typeof addr === "object" ? addr.port : 0;
  return relayOver(server, `${host}:${port}`, port, live, counter, () => undefined);
}

/**
 * Source side: a unix socket at `unixPath` (in the VM's run dir, connectable only by the VM's uid: the socket is
 * chowned to it and 0600) whose connections are joined to the target agent's `host:port`.
 */
export async function unixToTcp(unixPath: string, uid: number | undefined, host: string, port: number): Promise<Relay> {
  if (!Number.isInteger(port) || port < 1 || port > 65535) throw new VigilError("VIGIL_BAD_REQUEST", `Invalid migration port ${q(String(port))}: 1-65535`, { field: "port" });
  const live = new Set<Socket>();
  const counter = { n: 0 };
  rmSync(unixPath, { force: true });
  const server = createServer((client) => {
    if (live.size >= MAX_CONNECTIONS * 2) return void client.destroy();
    pipeTo(client, () => connect(port, host), (n) => (counter.n += n), live);
  });
  await listen(server, unixPath, q(unixPath));
  try {
    if (uid !== undefined) chownSync(unixPath, uid, uid);
    chmodSync(unixPath, 0o600);
  } catch (err) {
    await new Promise<void>((r) => server.close(() => r()));
    rmSync(unixPath, { force: true });
    throw new VigilError("VIGIL_HOST", `Cannot hand the migration socket ${q(unixPath)} to the VM: ${messageOf(err)}`, { cause: err });
  }
  return relayOver(server, unixPath, 0, live, counter, () => rmSync(unixPath, { force: true }));
}
