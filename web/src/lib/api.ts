/**
 * The one way the console talks to the daemon: same-origin fetch with the session cookie (HttpOnly: this code
 * never sees the token), the CSRF value on every request that changes something, and vigil's error body turned
 * into an ApiError that names the code, the message and the field. The API decides what is allowed; this only
 * carries its answer to the page.
 */

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly field?: string,
  ) {
    super(message);
  }
}

let csrf: string | null = null;

/** Set from POST/GET /v1/session; cleared on logout. Kept in memory only. */
export function setCsrf(value: string | null): void {
  csrf = value;
}

/** Called when a request finds the session gone (401), so the app can show the login page. */
let onUnauthenticated: () => void = () => undefined;
export function whenUnauthenticated(f: () => void): void {
  onUnauthenticated = f;
}

export interface RequestOptions {
  body?: unknown;
  /** Sent as x-request-id, so the caller can follow the request's progress on /v1/events. */
  requestId?: string;
  signal?: AbortSignal;
}

export async function api<T>(method: "GET" | "POST" | "PUT" | "PATCH" | "DELETE", path: string, o: RequestOptions = {}): Promise<T> {
  const headers: Record<string, string> = { accept: "application/json" };
  if (o.body !== undefined) headers["content-type"] = "application/json";
  if (method !== "GET" && csrf) headers["x-vigil-csrf"] = csrf;
  if (o.requestId) headers["x-request-id"] = o.requestId;
  let res: Response;
  try {
    res = await fetch(path, { method, headers, credentials: "same-origin", ...(o.body !== undefined ? { body: JSON.stringify(o.body) } : {}), ...(o.signal ? { signal: o.signal } : {}) });
  } catch (err) {
    if (err instanceof DOMException && err.name === "AbortError") throw err;
    throw new ApiError(0, "VIGIL_UNREACHABLE", "The vigil daemon cannot be reached");
  }
  const text = await res.text();
  let data: unknown = {};
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = res.ok ? text : { error: { code: "VIGIL_BAD_RESPONSE", message: text.slice(0, 300) } };
    }
  }
  if (!res.ok) {
    const e = (data as { error?: { code?: string; message?: string; field?: string } }).error ?? {};
    if (res.status === 401 && path !== "/v1/session") onUnauthenticated();
    throw new ApiError(res.status, e.code ?? `HTTP_${res.status}`, e.message ?? res.statusText, e.field);
  }
  return data as T;
}

/** A request id the daemon accepts (x-request-id: [A-Za-z0-9._-]{1,64}). */
export function newRequestId(): string {
  return `web-${crypto.randomUUID()}`;
}

export function errorText(err: unknown): string {
  if (err instanceof ApiError) return `${err.message}${err.field ? ` (field: ${err.field})` : ""} [${err.code}]`;
  return err instanceof Error ? err.message : String(err);
}
