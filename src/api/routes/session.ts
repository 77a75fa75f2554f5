/**
 * A browser's login (docs/web.md): POST /v1/session turns a bearer token into the HttpOnly session cookie
 * and tells the page its CSRF value and what it may do (to hide buttons; the API still decides every call).
 * Sessions exist only on the TCP listener: the unix socket needs no token and never reads cookies.
 */
import { createRoute, z } from "@hono/zod-openapi";
import { PERMISSIONS, ROLES } from "../../auth/permissions.ts";
import { clearedSessionCookie, sessionBody, sessionCookie } from "../../auth/session.ts";
import { VigilError } from "../../errors.ts";
import type { ApiDeps, App } from "../context.ts";
import { body, json, reply, withAccess } from "../route-kit.ts";

const SessionSchema = z
  .object({
    server: z.enum(["host", "manager"]).openapi({ description: "A host's daemon, or the cluster manager (its pages add hosts and migrations)" }),
    user: z.object({ name: z.string(), roles: z.array(z.enum(ROLES)), groups: z.array(z.string()) }),
    csrf: z.string().openapi({ description: "Send as x-vigil-csrf on every cookie-authenticated request that is not GET or HEAD" }),
    can: z.array(z.enum(PERMISSIONS)).openapi({ description: "Permissions held on every object" }),
    ownedCan: z.array(z.enum(PERMISSIONS)).openapi({ description: "Permissions held on VMs the user owns" }),
  })
  .openapi("Session");

const LoginSchema = z.strictObject({ token: z.string().min(1).max(512) });

const tcpOnly = (transport: string | undefined): void => {
  if (transport !== "tcp") throw new VigilError("VIGIL_BAD_REQUEST", "Sessions exist only on the TCP listener (for a browser); the unix socket needs no token");
};

export function registerSessionRoutes(app: App, d: ApiDeps): void {
  app.openapi(
    createRoute(withAccess("public", { method: "post", path: "/v1/session", tags: ["users"], summary: "Log a browser in: the token becomes the HttpOnly, SameSite=Strict session cookie vigil_session (TCP listener only)", request: body(LoginSchema), responses: { 200: json(SessionSchema, "Logged in: the cookie is set") } })),
    async (c) => {
      tcpOnly(c.env?.transport);
      const { token } = c.req.valid("json");
      const actor = await d.users.authenticate(token);
      if (!actor) {
        await d.audit.denials.deny(c.env?.remoteAddress ?? "unknown", "POST", "/v1/session", c.res.headers.get("x-request-id") ?? "unknown");
        throw new VigilError("VIGIL_UNAUTHENTICATED", "Cannot log in: the token is not valid (unknown, revoked or expired)");
      }
      c.header("set-cookie", sessionCookie(token, c.env?.secure === true));
      c.header("cache-control", "no-store");
      return reply(c, sessionBody(actor, token, "host"));
    },
  );

  app.openapi(
    createRoute(withAccess("authenticated", { method: "get", path: "/v1/session", tags: ["users"], summary: "Who this browser is logged in as, its CSRF value and permissions (after a reload)", responses: { 200: json(SessionSchema, "The session") } })),
    async (c) => {
      tcpOnly(c.env?.transport);
      const presented = c.get("presented");
      if (!presented) throw new VigilError("VIGIL_UNAUTHENTICATED", "A valid token is required");
      c.header("cache-control", "no-store");
      return reply(c, sessionBody(c.get("ctx").actor, presented.token, "host"));
    },
  );

  app.openapi(
    createRoute(withAccess("authenticated", { method: "delete", path: "/v1/session", tags: ["users"], summary: "Log this browser out: the cookie is cleared (the token itself stays valid; revoke it to end it everywhere)", responses: { 200: json(z.object({}), "Logged out") } })),
    async (c) => {
      tcpOnly(c.env?.transport);
      c.header("set-cookie", clearedSessionCookie(c.env?.secure === true));
      return reply(c, {});
    },
  );
}
