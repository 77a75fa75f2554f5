/**
 * The HTTP API: Hono with OpenAPI route definitions. Order of work for every request: assign a request id,
 * authenticate (unix socket → the local user; otherwise a bearer token, or on TCP a browser's session cookie with
 * its CSRF header for changes; deny by default), validate the input
 * against the route's schema, call one service method. Errors become responses only in error-response.ts.
 */
import { OpenAPIHono } from "@hono/zod-openapi";
import { randomUUID } from "node:crypto";
import { VigilError } from "../errors.ts";
import type { RequestContext } from "../auth/guard.ts";
import { authenticateRequest } from "../auth/authenticate.ts";
import { CSRF_HEADER, csrfMatches, isSafeMethod, presentedToken } from "../auth/session.ts";
import { ACTOR_HEADER } from "../cluster/types.ts";
import { zodIssueToError } from "../validation.ts";
import type { ApiDeps, App, Env } from "./context.ts";
import { errorBody, errorResponse } from "./error-response.ts";
import { registerAccountRoutes } from "./routes/accounts.ts";
import { registerSystemRoutes, registerTaskRoutes } from "./routes/system.ts";
import { registerVmRoutes } from "./routes/vms.ts";
import { registerStorageRoutes } from "./routes/storage.ts";
import { registerVtimeRoutes } from "./routes/vtime.ts";
import { registerIntrospectionRoutes } from "./routes/introspection.ts";
import { registerNetworkRoutes } from "./routes/networks.ts";
import { registerFirewallRoutes } from "./routes/firewall.ts";
import { registerPostureRoutes, registerScanRoutes } from "./routes/posture.ts";
import { registerRecordingRoutes } from "./routes/recordings.ts";
import { registerNetworkVisRoutes } from "./routes/network-vis.ts";
import { registerAgentRoutes } from "./routes/agent.ts";
import { registerSessionRoutes } from "./routes/session.ts";
import { registerMetricsRoutes } from "./routes/metrics.ts";
import { isStaticRequest, serveStatic, webDir } from "./static-files.ts";

export const PUBLIC_PATHS = new Set(["/v1/health", "/openapi.json"]);

export const OPENAPI_INFO = {
  openapi: "3.1.0",
  info: {
    title: "vigil API",
    version: "1",
    description:
      "Manage QEMU virtual machines with ownership, audit and rollback-safe time built in. Authenticate with `Authorization: Bearer <token>` (the local unix socket needs none), or in a browser with the session cookie of POST /v1/session plus its `x-vigil-csrf` header on every request that is not GET or HEAD. Errors are `{error: {code, message, field?}}`.",
  },
};

export function createApp(d: ApiDeps): App {
  const app: App = new OpenAPIHono<Env>({
    defaultHook: (result, c) => {
      if (result.success) return;
      const err = zodIssueToError(result.error, (result as { data?: unknown }).data, "request", "VIGIL_BAD_REQUEST");
      return c.json(errorBody(err), 400);
    },
  });

  app.openAPIRegistry.registerComponent("securitySchemes", "bearer", { type: "http", scheme: "bearer" });

  app.use("*", async (c, next) => {
    const given = c.req.header("x-request-id");
    const requestId = given && /^[A-Za-z0-9._-]{1,64}$/.test(given) ? given : randomUUID();
    c.header("x-request-id", requestId);
    if (PUBLIC_PATHS.has(c.req.path) || (c.req.path === "/v1/session" && c.req.method === "POST")) return next();
    // The web console's files are public (the app holds no data): served here, before any authentication.
    if (isStaticRequest(c.req.method, c.req.path)) return serveStatic(webDir(), new URL(c.req.url).pathname, c.req.method);

    const transport = c.env?.transport;
    // Only the TCP listener reads the session cookie (a browser's); the unix socket and the cluster door never do.
    const cookie = transport === "tcp" ? c.req.header("cookie") : undefined;
    const actor = await authenticateRequest(d.users, d.localUser, transport, c.req.header("authorization"), c.req.header(ACTOR_HEADER), cookie);
    if (!actor) {
      if (c.req.method !== "GET" && c.req.method !== "HEAD") {
        // Aggregated per source: the first per interval is recorded at once, the rest as one count.
        await d.audit.denials.deny(c.env?.remoteAddress ?? "unknown", c.req.method, c.req.path.slice(0, 200), requestId);
      }
      return c.json(errorBody(new VigilError("VIGIL_UNAUTHENTICATED", "A valid token is required: send Authorization: Bearer <token> (see `vigil login`)")), 401);
    }
    const presented = transport === "tcp" ? presentedToken(c.req.header("authorization"), cookie) : undefined;
    // A cookie is sent by the browser on its own: a change it authenticates must prove the page knew csrf(token).
    if (presented?.via === "cookie" && !isSafeMethod(c.req.method) && !csrfMatches(presented.token, c.req.header(CSRF_HEADER))) {
      await d.audit.denials.deny(c.env?.remoteAddress ?? "unknown", c.req.method, c.req.path.slice(0, 200), requestId);
      return c.json(errorBody(new VigilError("VIGIL_CSRF", "A request authenticated by the session cookie needs the x-vigil-csrf header from POST /v1/session")), 403);
    }
    c.set("presented", presented);
    const ctx: RequestContext = { actor, requestId };
    d.progress.claim(requestId, actor.name); // only this actor may follow the request's progress
    c.set("ctx", ctx);
    if (isSafeMethod(c.req.method)) return next();
    // A change is a task (util/task-log.ts) until its answer has been sent in full.
    const end = d.tasks.begin({ requestId, actor: actor.name, method: c.req.method, path: c.req.path });
    try {
      await next();
    } catch (err) {
      end(500);
      throw err;
    }
    c.res = endsWithBody(c.res, end);
  });

  registerSystemRoutes(app, d);
  registerVmRoutes(app, d);
  registerAccountRoutes(app, d);
  registerStorageRoutes(app, d);
  registerVtimeRoutes(app, d);
  registerIntrospectionRoutes(app, d);
  registerNetworkRoutes(app, d);
  registerFirewallRoutes(app, d);
  registerPostureRoutes(app, d);
  registerScanRoutes(app, d);
  registerRecordingRoutes(app, d);
  registerNetworkVisRoutes(app, d);
  registerAgentRoutes(app, d);
  registerSessionRoutes(app, d);
  registerMetricsRoutes(app, d);
  registerTaskRoutes(app, d);

  app.doc31("/openapi.json", OPENAPI_INFO);
  app.notFound((c) => c.json(errorBody(new VigilError("VIGIL_NOT_FOUND", `No such route: ${c.req.method} ${c.req.path}`)), 404));
  app.onError((err, c) => errorResponse(c, err, d.log));
  return app;
}

/**
 * The answer with `end` called once its body has been read to the end (or the client went: 499, as nginx names
 * it; or the body failed: 500), so a streamed export is a task until its last byte.
 */
function endsWithBody(res: Response, end: (status: number) => void): Response {
  const body = res.body;
  if (!body) {
    end(res.status);
    return res;
  }
  const reader = body.getReader();
  const wrapped = new ReadableStream<Uint8Array>({
    async pull(ctrl) {
      try {
        const { done, value } = await reader.read();
        if (done) {
          end(res.status);
          ctrl.close();
        } else ctrl.enqueue(value);
      } catch (err) {
        end(500);
        ctrl.error(err);
      }
    },
    cancel(reason) {
      end(499);
      return reader.cancel(reason);
    },
  });
  return new Response(wrapped, { status: res.status, statusText: res.statusText, headers: res.headers });
}

/** The OpenAPI document, as served at /openapi.json and checked in at docs/openapi.json. */
export function openApiDocument(app: App): unknown {
  return app.getOpenAPI31Document(OPENAPI_INFO);
}
