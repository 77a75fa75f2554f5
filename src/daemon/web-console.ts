/**
 * The browser's serial console (docs/web.md "Sessions, CSRF and the console socket"):
 * `GET /v1/vms/NAME/console/ws` with `Upgrade: websocket` bridges a WebSocket to the VM's serial socket — guest
 * bytes become binary messages, every message (binary, or text as its UTF-8 bytes) goes to the guest. A browser
 * sends the session cookie on a WebSocket from any site and lets no page add a header to it, so instead of a CSRF
 * header the `Origin` must be this very origin (cross-site WebSocket hijacking); it is checked before anything
 * else, then authentication and `vm.console` exactly as for the raw `vigil-console` upgrade (the same
 * authenticateRequest, the same VmService.openConsole, which audits the open).
 */
import type { IncomingMessage } from "node:http";
import { connect, type Socket } from "node:net";
import type { Duplex } from "node:stream";
import { WebSocketServer, type RawData, type WebSocket } from "ws";
import { authenticateRequest, type Transport } from "../auth/authenticate.ts";
import type { RequestContext } from "../auth/guard.ts";
import { VigilError, q } from "../errors.ts";
import type { ApiDeps } from "../api/context.ts";
import { rawErrorResponse } from "../api/error-response.ts";

/** The largest message a browser may send (a paste is split by the page; 64 KiB is plenty for typing). */
export const WS_MAX_PAYLOAD = 64 * 1024;
/** Guest output waits in the socket's buffer up to this much before the serial socket is paused. */
const HIGH_WATER = 1024 * 1024;

export const WS_CONSOLE_PATH = /^\/v1\/vms\/([a-z][a-z0-9-]{0,62})\/console\/ws$/;

/** Whether an upgrade request is a WebSocket one (the raw console uses `Upgrade: vigil-console`). */
export function isWebSocketUpgrade(req: IncomingMessage): boolean {
  return req.headers.upgrade?.toLowerCase() === "websocket";
}

/** The origin a page of this listener has: the scheme of the listener and the Host the browser addressed. */
export function sameOrigin(origin: string | undefined, host: string | undefined, secure: boolean): boolean {
  if (!origin || !host) return false;
  return origin === `${secure ? "https" : "http"}://${host}`;
}

/** One per listener: it only parses upgrades, it listens on nothing itself. */
export function createWebConsole(d: ApiDeps, transport: Transport, secure: boolean): { upgrade(req: IncomingMessage, socket: Socket, head: Buffer): Promise<void>; close(): void } {
  const wss = consoleSocketServer();
  const upgrade = async (req: IncomingMessage, socket: Socket, head: Buffer): Promise<void> => {
    const refuse = (err: VigilError): void => void socket.end(rawErrorResponse(err));
    socket.on("error", () => socket.destroy());
    try {
      const m = WS_CONSOLE_PATH.exec(new URL(req.url ?? "/", "http://x").pathname);
      if (!m || transport === "cluster") return refuse(new VigilError("VIGIL_NOT_FOUND", "Only /v1/vms/NAME/console/ws can be upgraded to a WebSocket"));
      const origin = header(req, "origin");
      if (!sameOrigin(origin, header(req, "host"), secure)) {
        return refuse(new VigilError("VIGIL_FORBIDDEN", `Refusing the console socket: its Origin ${q(origin ?? "(none)")} is not this server's (a page of another site cannot open it)`));
      }
      const cookie = transport === "tcp" ? header(req, "cookie") : undefined;
      const actor = await authenticateRequest(d.users, d.localUser, transport, header(req, "authorization"), undefined, cookie);
      if (!actor) return refuse(new VigilError("VIGIL_UNAUTHENTICATED", "A valid token is required: log in (POST /v1/session) or send Authorization: Bearer <token>"));
      const ctx: RequestContext = { actor, requestId: crypto.randomUUID() };
      const serialPath = await d.vms.openConsole(ctx, m[1]!);
      const serial = connect(serialPath);
      let upgraded = false;
      serial.once("error", (err) => {
        if (!upgraded) refuse(new VigilError("VIGIL_QEMU", `Cannot connect to the serial console: ${err.message}`));
      });
      serial.once("connect", () => {
        if (socket.destroyed) return void serial.destroy();
        upgraded = true;
        wss.handleUpgrade(req, socket, head, (ws) => bridgeWebSocket(ws, serial));
      });
    } catch (err) {
      refuse(err instanceof VigilError ? err : new VigilError("VIGIL_INTERNAL", "Internal error"));
    }
  };
  // Shutdown ends open consoles (their serial connections close with them; the VMs keep running).
  const close = () => {
    for (const ws of wss.clients) ws.terminate();
    wss.close();
  };
  return { upgrade, close };
}

/** The WebSocket side of a console listener: it only parses upgrades; 64 KiB messages; no compression. */
export function consoleSocketServer(): WebSocketServer {
  return new WebSocketServer({ noServer: true, maxPayload: WS_MAX_PAYLOAD, perMessageDeflate: false });
}

/**
 * Guest ↔ browser, with backpressure both ways; either side closing closes the other. `serial` is the VM's serial
 * socket on a host, or on the cluster manager the agent's console stream.
 */
export function bridgeWebSocket(ws: WebSocket, serial: Duplex): void {
  serial.on("data", (chunk: Buffer) => {
    ws.send(chunk, { binary: true }, () => {
      if (serial.isPaused() && ws.bufferedAmount < HIGH_WATER / 2) serial.resume();
    });
    if (ws.bufferedAmount > HIGH_WATER) serial.pause();
  });
  ws.on("message", (data: RawData) => {
    const buf = Array.isArray(data) ? Buffer.concat(data) : Buffer.from(data as ArrayBuffer);
    if (!serial.write(buf)) {
      ws.pause();
      serial.once("drain", () => ws.resume());
    }
  });
  const end = () => {
    serial.destroy();
    if (ws.readyState === ws.OPEN || ws.readyState === ws.CONNECTING) ws.close(1000, "console closed");
  };
  serial.on("close", end);
  serial.on("error", end);
  ws.on("close", () => serial.destroy());
  ws.on("error", () => {
    ws.terminate();
    serial.destroy();
  });
}

export function header(req: IncomingMessage, name: string): string | undefined {
  const v = req.headers[name];
  return Array.isArray(v) ? v[0] : v;
}
