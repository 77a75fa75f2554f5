/**
 * The one place errors become HTTP responses: `{error: {code, message, field?}}` with the catalogue's status. A
 * bug or an unexpected exception is logged with its stack and answered with a generic 500 — never a stack
 * trace to the caller. A request the framework refuses before any route runs (a body that is not JSON, a
 * Content-Type the route does not take) is the caller's mistake: a 4xx from the catalogue, logged without a stack.
 */
import type { Context } from "hono";
import { HTTPException } from "hono/http-exception";
import type { ContentfulStatusCode } from "hono/utils/http-status";
import { VigilError, messageOf, q } from "../errors.ts";
import type { Logger } from "../log.ts";

export interface ErrorBody {
  error: { code: string; message: string; field?: string };
}

export function errorBody(err: VigilError): ErrorBody {
  return { error: { code: err.code, message: err.message, ...(err.field ? { field: err.field } : {}) } };
}

/** The catalogue error for a request refused by the framework itself (body parsing, media type), if it is one. */
export function frameworkRefusal(c: Context, err: unknown): VigilError | undefined {
  if (!(err instanceof HTTPException) || err.status >= 500) return undefined;
  if (err.status === 415) {
    const type = c.req.header("content-type") ?? "";
    return new VigilError("VIGIL_UNSUPPORTED_MEDIA_TYPE", `Unsupported Content-Type ${q(type || "none")}: this route takes a JSON body (Content-Type: application/json)`, { field: "content-type" });
  }
  if (err.status === 400 && /json/i.test(err.message)) return new VigilError("VIGIL_BAD_REQUEST", "Bad request: the request body is not valid JSON", { field: "body" });
  return new VigilError("VIGIL_BAD_REQUEST", `Bad request: ${err.message.slice(0, 200)}`);
}

export function errorResponse(c: Context, err: unknown, log: Logger): Response {
  if (err instanceof VigilError) return c.json(errorBody(err), err.status as ContentfulStatusCode);
  const refusal = frameworkRefusal(c, err);
  if (refusal) {
    log.info({ path: c.req.path, method: c.req.method, status: refusal.status, code: refusal.code }, refusal.message);
    return c.json(errorBody(refusal), refusal.status as ContentfulStatusCode);
  }
  log.error({ err, path: c.req.path }, "unexpected error");
  return c.json({ error: { code: "VIGIL_INTERNAL", message: `Internal error (request ${c.res.headers.get("x-request-id") ?? "?"}): ${messageOf(err).slice(0, 200)}` } }, 500);
}

/** The same error as a fetch Response, for listeners that refuse before the app runs (the agent's cluster door). */
export function vigilErrorResponse(err: VigilError): Response {
  return new Response(JSON.stringify(errorBody(err)), { status: err.status, headers: { "content-type": "application/json" } });
}

/**
 * The same error as a complete raw HTTP/1.1 response, for the console upgrade, which answers on the socket
 * before (or instead of) switching protocols.
 */
export function rawErrorResponse(err: VigilError): string {
  const body = JSON.stringify(errorBody(err));
  const reason = err.status === 401 ? "Unauthorized" : err.status === 403 ? "Forbidden" : err.status === 404 ? "Not Found" : "Error";
  return `HTTP/1.1 ${err.status} ${reason}\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`;
}
