/**
 * Streams the manager forwards to the agent that holds a VM (docs/cluster.md "Reaching the manager"): the serial
 * console upgrade (`GET /v1/vms/NAME/console`, `Upgrade: vigil-console`). The manager authenticates the user (token
 * on TCP, the local user on its socket), opens the same upgrade on the agent over mutual TLS acting for that user
 * (`x-vigil-actor`, as every JSON call does; the agent's Guard decides and audits), then splices the two byte
 * streams: back-pressure both ways (a slow reader pauses the other side), and when either end goes the other is
 * closed too.
 */
import type { IncomingMessage } from "node:http";
import type { Duplex } from "node:stream";
import type { Actor } from "../auth/permissions.ts";
import { rawErrorResponse } from "../api/error-response.ts";
import { VigilError, messageOf } from "../errors.ts";
import type { DelegatedActor } from "../cluster/types.ts";

export const CONSOLE_PROTOCOL = "vigil-console";
const CONSOLE_PATH = /^\/v1\/vms\/([a-z][a-z0-9-]{0,62})\/console$/;

/**
 * Joins two byte streams: what one reads the other writes, with back-pressure (pipe pauses the reader while the
 * writer's buffer is full); either side's end, error or close destroys both.
 */
export function splice(a: Duplex, b: Duplex): void {
  let done = false;
  const end = () => {
    if (done) return;
    done = true;
    a.destroy();
    b.destroy();
  };
  for (const s of [a, b]) {
    s.on("error", end);
    s.on("close", end);
    // A half-closed side (FIN) ends the session: a console has no use for one direction alone.
    s.on("end", end);
  }
  a.pipe(b, { end: false });
  b.pipe(a, { end: false });
}

export interface ConsoleForwardDeps {
  /** The user of the request (undefined: not authenticated), as the manager's middleware decides it. */
  authenticate(req: IncomingMessage): Promise<Actor | undefined>;
  /** Which host holds the VM (VIGIL_VM_NOT_FOUND when none). */
  holder(vm: string): Promise<string>;
  /** Opens the upgrade on the agent `host`, for `actor`. */
  open(host: string, path: string, actor: DelegatedActor): Promise<{ socket: Duplex; head: Buffer }>;
  onError?(err: unknown): void;
}

/** The user a console stream is opened for on the agent (the CLI's raw upgrade and the browser's WebSocket alike). */
export const toDelegated = (a: Actor): DelegatedActor => ({ name: a.name, roles: a.roles, groups: a.groups, introspect: a.introspect });

/** Serves one upgrade request that arrived at the manager: refused with the API's error body, or spliced to the agent. */
export async function forwardConsoleUpgrade(d: ConsoleForwardDeps, req: IncomingMessage, socket: Duplex, head: Buffer): Promise<void> {
  const refuse = (err: VigilError): void => void socket.end(rawErrorResponse(err));
  socket.on("error", () => socket.destroy());
  try {
    const m = CONSOLE_PATH.exec(new URL(req.url ?? "/", "http://x").pathname);
    if (!m || req.headers.upgrade?.toLowerCase() !== CONSOLE_PROTOCOL) return refuse(new VigilError("VIGIL_NOT_FOUND", `Only /v1/vms/NAME/console can be upgraded (Upgrade: ${CONSOLE_PROTOCOL})`));
    const actor = await d.authenticate(req);
    if (!actor) return refuse(new VigilError("VIGIL_UNAUTHENTICATED", "A valid token is required"));
    const host = await d.holder(m[1]!);
    const upstream = await d.open(host, `/v1/vms/${m[1]!}/console`, toDelegated(actor));
    if (socket.destroyed) {
      upstream.socket.destroy();
      return;
    }
    socket.write(`HTTP/1.1 101 Switching Protocols\r\nupgrade: ${CONSOLE_PROTOCOL}\r\nconnection: Upgrade\r\n\r\n`);
    // Bytes the client sent after its request's head, and the agent's after its 101: each to the other side first.
    if (head.length > 0) upstream.socket.write(head);
    if (upstream.head.length > 0) socket.write(upstream.head);
    splice(socket, upstream.socket);
  } catch (err) {
    if (!(err instanceof VigilError)) d.onError?.(err);
    refuse(err instanceof VigilError ? err : new VigilError("VIGIL_INTERNAL", `Internal error: ${messageOf(err).slice(0, 200)}`));
  }
}
