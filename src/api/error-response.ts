/**
 * The one place errors become HTTP responses: `{error: {code, message, field?}}` with the catalogue's status. A
 * bug or an unexpected exception is logged with its stack and answered with a generic 500 — never a stack
 * trace to the caller.
 */
import type { Context } from "hono";
import type { ContentfulStatusCode } from "hono/utils/http-status";
import { VigilError, messageOf } from "../errors.ts";
import type { Logger } from "../log.ts";

export interface ErrorBody {
  error: { code: string; message: string; field?: string };
}

export function errorBody(err: VigilError): ErrorBody {
  return { error: { code: err.code, message: err.message, ...(err.field ? { field: err.field } : {}) } };
}

export function errorResponse(c: Context, err: unknown, log: Logger): Response {
  if (err instanceof VigilError) return c.json(errorBody(err), err.status as ContentfulStatusCode);
  log.error({ err, path: c.req.path }, "unexpected error");
  return c.json({ error: { code: "VIGIL_INTERNAL", message: `Internal error (request ${c.res.headers.get("x-request-id") ?? "?"}): ${messageOf(err).slice(0, 200)}` } }, 500);
}
