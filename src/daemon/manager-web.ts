/**
 * The web console on the cluster manager (docs/web.md "On a cluster"): the same app, sign-in and rules as on a
 * single host's daemon, so an operator opens one URL for the whole site. The manager serves the built app, turns a
 * token into the HttpOnly session cookie, requires the CSRF header on every change a cookie authenticates, and
 * bridges the browser's console WebSocket to the console stream of the agent that holds the VM (the agent
 * authorizes and audits it for the user, as for the CLI's console through the manager). Everything else the pages
 * ask is a manager route or forwarded to the holding agent like any client's request.
 */
import type { IncomingMessage } from "node:http";
import type { Duplex } from "node:stream";
import type { Context, Hono, Next } from "hono";
import type { AuditLog } from "../audit/audit-log.ts";
import { authenticateRequest } from "../auth/authenticate.ts";
import type { RequestContext } from "../auth/guard.ts";
import { CSRF_HEADER, clearedSessionCookie, csrfMatches, isSafeMethod, presentedToken, sessionBody, sessionCookie, type PresentedToken } from "../auth/session.ts";
import type { UserStore } from "../auth/users.ts";
import type { DelegatedActor } from "../cluster/types.ts";
import { VigilError, messageOf, q } from "../errors.ts";
import { errorBody, rawErrorResponse } from "../api/error-response.ts";
import { isStaticRequest, serveStatic, webDir } from "../api/static-files.ts";
import { WS_CONSOLE_PATH, bridgeWebSocket, consoleSocketServer, header, sameOrigin } from "./web-console.ts";
import { toDelegated } from "./stream-forward.ts";

export type ManagerEnv = { Variables: { ctx: RequestContext; presented: PresentedToken | undefined }; Bindings: { transport?: "unix" | "tcp"; remoteAddress?: string | undefined } };

export interface ManagerWebDeps {
  users: UserStore;
  localUser: string;
  audit: AuditLog;
  /** The users' TCP listener serves HTTPS (the cookie then carries Secure, and the Origin is https://). */
  secure: boolean;
}

/**
 * The manager's authentication, as the daemon's (api/app.ts): the web console's files are public; POST
 * /v1/session is the login; otherwise the unix socket's local user, a bearer token, or on TCP the session cookie
 * — and a change the cookie authenticates needs `x-vigil-csrf` (403 `VIGIL_CSRF`, audited as a denial).
 */
export function managerAuthentication(d: ManagerWebDeps) {
  return async (c: Context<ManagerEnv>, next: Next): Promise<Response | void> => {
    if (c.req.path === "/v1/session" && c.req.method === "POST") return next();
    if (isStaticRequest(c.req.method, c.req.path)) return serveStatic(webDir(), new URL(c.req.url).pathname, c.req.method);
    const transport = c.env?.transport;
    const cookie = transport === "tcp" ? c.req.header("cookie") : undefined;
    const actor = await authenticateRequest(d.users, d.localUser, transport, c.req.header("authorization"), undefined, cookie);
    if (!actor) return c.json(errorBody(new VigilError("VIGIL_UNAUTHENTICATED", "A valid token is required")), 401);
    const requestId = crypto.randomUUID();
    const presented = transport === "tcp" ? presentedToken(c.req.header("authorization"), cookie) : undefined;
    if (presented?.via === "cookie" && !isSafeMethod(c.req.method) && !csrfMatches(presented.token, c.req.header(CSRF_HEADER))) {
      await d.audit.denials.deny(c.env?.remoteAddress ?? "unknown", c.req.method, c.req.path.slice(0, 200), requestId);
      return c.json(errorBody(new VigilError("VIGIL_CSRF", "A request authenticated by the session cookie needs the x-vigil-csrf header from POST /v1/session")), 403);
    }
    c.set("ctx", { actor, requestId });
    c.set("presented", presented);
    return next();
  };
}

/** POST/GET/DELETE /v1/session, as on a host (api/routes/session.ts): TCP only, JSON only (no login CSRF). */
export function registerManagerSessions(app: Hono<ManagerEnv>, d: ManagerWebDeps): void {
  const tcpOnly = (c: Context<ManagerEnv>): void => {
    if (c.env?.transport !== "tcp") throw new VigilError("VIGIL_BAD_REQUEST", "Sessions exist only on the TCP listener (for a browser); the unix socket needs no token");
  };
  app.post("/v1/session", async (c) => {
    tcpOnly(c);
    if (!(c.req.header("content-type") ?? "").toLowerCase().startsWith("application/json")) throw new VigilError("VIGIL_UNSUPPORTED_MEDIA_TYPE", "Log in with a JSON body {\"token\": …} (Content-Type: application/json)");
    const body = (await c.req.json().catch(() => undefined)) as { token?: unknown } | undefined;
    const token = typeof body?.token === "string" && body.token.length > 0 && body.token.length <= 512 ? body.token : undefined;
    if (!token) throw new VigilError("VIGIL_BAD_REQUEST", "Invalid session request: \"token\" must be a string of 1 to 512 characters", { field: "token" });
    const actor = await d.users.authenticate(token);
    if (!actor) {
      await d.audit.denials.deny(c.env?.remoteAddress ?? "unknown", "POST", "/v1/session", crypto.randomUUID());
      throw new VigilError("VIGIL_UNAUTHENTICATED", "Cannot log in: the token is not valid (unknown, revoked or expired)");
    }
    c.header("set-cookie", sessionCookie(token, d.secure));
    c.header("cache-control", "no-store");
    return c.json(sessionBody(actor, token, "manager"));
  });
  app.get("/v1/session", (c) => {
    tcpOnly(c);
    const presented = c.get("presented");
    if (!presented) throw new VigilError("VIGIL_UNAUTHENTICATED", "A valid token is required");
    c.header("cache-control", "no-store");
    return c.json(sessionBody(c.get("ctx").actor, presented.token, "manager"));
  });
  app.delete("/v1/session", (c) => {
    tcpOnly(c);
    c.header("set-cookie", clearedSessionCookie(d.secure));
    return c.json({});
  });
}

export interface ManagerConsoleDeps extends Omit<ManagerWebDeps, "audit"> {
  holder(vm: string): Promise<string>;
  /** Opens the agent's raw console upgrade for `actor` (as the CLI's console through the manager). */
  open(host: string, path: string, actor: DelegatedActor): Promise<{ socket: Duplex; head: Buffer }>;
  onError(err: unknown): void;
}

/**
 * The browser's console socket on the manager's TCP listener: the Origin must be this origin (a page of another
 * site cannot open it: the browser would send the cookie), then the user is authenticated (cookie or bearer), the
 * holding agent's console is opened for them, and the WebSocket is bridged to it.
 */
export function createManagerWebConsole(d: ManagerConsoleDeps): { upgrade(req: IncomingMessage, socket: Duplex, head: Buffer): Promise<void>; close(): void } {
  const wss = consoleSocketServer();
  const upgrade = async (req: IncomingMessage, socket: Duplex, head: Buffer): Promise<void> => {
    const refuse = (err: VigilError): void => void socket.end(rawErrorResponse(err));
    socket.on("error", () => socket.destroy());
    try {
      const m = WS_CONSOLE_PATH.exec(new URL(req.url ?? "/", "http://x").pathname);
      if (!m) return refuse(new VigilError("VIGIL_NOT_FOUND", "Only /v1/vms/NAME/console/ws can be upgraded to a WebSocket"));
      const origin = header(req, "origin");
      if (!sameOrigin(origin, header(req, "host"), d.secure)) {
        return refuse(new VigilError("VIGIL_FORBIDDEN", `Refusing the console socket: its Origin ${q(origin ?? "(none)")} is not this server's (a page of another site cannot open it)`));
      }
      const actor = await authenticateRequest(d.users, d.localUser, "tcp", header(req, "authorization"), undefined, header(req, "cookie"));
      if (!actor) return refuse(new VigilError("VIGIL_UNAUTHENTICATED", "A valid token is required: log in (POST /v1/session) or send Authorization: Bearer <token>"));
      const host = await d.holder(m[1]!);
      const upstream = await d.open(host, `/v1/vms/${m[1]!}/console`, toDelegated(actor));
      if (socket.destroyed) return void upstream.socket.destroy();
      wss.handleUpgrade(req, socket as Parameters<typeof wss.handleUpgrade>[1], head, (ws) => {
        // What the agent sent right after its 101 is the guest's first output.
        if (upstream.head.length > 0) ws.send(upstream.head, { binary: true });
        bridgeWebSocket(ws, upstream.socket);
      });
    } catch (err) {
      if (!(err instanceof VigilError)) d.onError(err);
      refuse(err instanceof VigilError ? err : new VigilError("VIGIL_INTERNAL", `Internal error: ${messageOf(err).slice(0, 200)}`));
    }
  };
  const close = () => {
    for (const ws of wss.clients) ws.terminate();
    wss.close();
  };
  return { upgrade, close };
}
