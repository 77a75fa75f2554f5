/**
 * Small helpers so each route definition states only what is particular to it: method, path, the permission
 * it needs (recorded in the OpenAPI document as `x-vigil-permission`, which the authorization matrix test
 * reads), its inputs and its success schema. Error responses are the same for every route.
 */
import { z, type RouteConfig } from "@hono/zod-openapi";
import type { Permission } from "../auth/permissions.ts";
import { ErrorSchema } from "./schemas.ts";

const errorContent = { content: { "application/json": { schema: ErrorSchema } } };

export const ERROR_RESPONSES = {
  400: { ...errorContent, description: "Invalid input: the error names the field" },
  401: { ...errorContent, description: "No valid token" },
  403: { ...errorContent, description: "Permission denied (recorded in the audit log)" },
  404: { ...errorContent, description: "No such object" },
  409: { ...errorContent, description: "Not allowed in the object's current state" },
  422: { ...errorContent, description: "Refused by policy" },
  500: { ...errorContent, description: "Internal error" },
  502: { ...errorContent, description: "QEMU or the guest agent failed" },
  504: { ...errorContent, description: "Timed out" },
} as const;

/** Who may call a route: a permission, "self" (own account), "authenticated" (any user) or "public". */
export type RouteAccess = Permission | "self" | "authenticated" | "public";

export function json<S extends z.ZodType>(schema: S, description: string) {
  return { content: { "application/json": { schema } }, description };
}

export function body<S extends z.ZodType>(schema: S) {
  return { body: { content: { "application/json": { schema } }, required: true } };
}

export function optionalBody<S extends z.ZodType>(schema: S) {
  return { body: { content: { "application/json": { schema } }, required: false } };
}

/** Adds the shared parts (tags, security, access, error responses) to a route definition. */
export function withAccess<R extends RouteConfig>(access: RouteAccess, route: R): R {
  return {
    ...route,
    "x-vigil-permission": access,
    ...(access === "public" ? { security: [] } : { security: [{ bearer: [] }] }),
    responses: { ...ERROR_RESPONSES, ...route.responses },
  };
}

/**
 * Sends a JSON success body. Responses are checked against the route's schema by the API tests at run time
 * (every route, every status); Hono's compile-time response typing is bypassed because it cannot express
 * optional properties under exactOptionalPropertyTypes.
 */
export function reply(c: { json: (data: never, status: never) => Response }, data: unknown, status: 200 | 201 = 200): never {
  return c.json(data as never, status as never) as never;
}
