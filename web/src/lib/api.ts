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

type Method = "GET" | "POST" | "PUT" | "PATCH" | "DELETE";

export async function api<T>(method: Method, path: string, o: RequestOptions = {}): Promise<T> {
  const res = await send(method, path, o.body === undefined ? undefined : { type: "application/json", data: JSON.stringify(o.body) }, o);
  const text = await res.text();
  if (!text) return {} as T;
  try {
    return JSON.parse(text) as T;
  } catch {
    return text as T;
  }
}

/**
 * A request whose answer is a file (an exported bundle, a recording's tar, a capture's pcap): its bytes, read as
 * they arrive so `onBytes` can show how far it is (of the Content-Length, when the daemon sends one). A POST with
 * `body` as JSON (an export is a change: CSRF-protected), or with `body` null a GET of a file that exists.
 */
export async function download(path: string, body: unknown, o: RequestOptions & { onBytes?: (done: number, total: number | null) => void } = {}): Promise<Blob> {
  const res = body === null ? await send("GET", path, undefined, o, "*/*") : await send("POST", path, { type: "application/json", data: JSON.stringify(body ?? {}) }, o, "*/*");
  const length = Number(res.headers.get("content-length"));
  const total = Number.isFinite(length) && length > 0 ? length : null;
  const reader = res.body?.getReader();
  if (!reader) return res.blob();
  const parts: Uint8Array[] = [];
  let done = 0;
  for (;;) {
    const chunk = await reader.read();
    if (chunk.done) break;
    parts.push(chunk.value);
    done += chunk.value.byteLength;
    o.onBytes?.(done, total);
  }
  return new Blob(parts as BlobPart[], { type: res.headers.get("content-type") ?? "application/octet-stream" });
}

/** A request whose body is a file the user chose (a bundle to import); the answer is JSON. */
export async function upload<T>(path: string, file: Blob, type: string, o: RequestOptions = {}): Promise<T> {
  const res = await send("POST", path, { type, data: file }, o);
  return JSON.parse((await res.text()) || "{}") as T;
}

/** The one fetch: cookie, CSRF, request id; a failure becomes an ApiError from vigil's error body. */
async function send(method: Method, path: string, body: { type: string; data: BodyInit } | undefined, o: RequestOptions, accept = "application/json"): Promise<Response> {
  const headers: Record<string, string> = { accept };
  if (body) headers["content-type"] = body.type;
  if (method !== "GET" && csrf) headers["x-vigil-csrf"] = csrf;
  if (o.requestId) headers["x-request-id"] = o.requestId;
  let res: Response;
  try {
    res = await fetch(path, { method, headers, credentials: "same-origin", ...(body ? { body: body.data } : {}), ...(o.signal ? { signal: o.signal } : {}) });
  } catch (err) {
    if (err instanceof DOMException && err.name === "AbortError") throw err;
    throw new ApiError(0, "VIGIL_UNREACHABLE", "The vigil daemon cannot be reached");
  }
  if (res.ok) return res;
  const text = await res.text();
  let e: { code?: string; message?: string; field?: string } = {};
  try {
    if (text) e = (JSON.parse(text) as { error?: typeof e }).error ?? {};
  } catch {
    e = { code: "VIGIL_BAD_RESPONSE", message: text.slice(0, 300) }; // not vigil's JSON error (a proxy's page)
  }
  if (res.status === 401 && path !== "/v1/session") onUnauthenticated();
  throw new ApiError(res.status, e.code ?? `HTTP_${res.status}`, e.message || res.statusText, e.field);
}

/** Hands `blob` to the browser as a download named `filename` (the page never writes files itself). */
export function saveAs(blob: Blob, filename: string): void {
  const url = URL.createObjectURL(blob);
  const a = document.createElement("a");
  a.href = url;
  a.download = filename;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

/** A request id the daemon accepts (x-request-id: [A-Za-z0-9._-]{1,64}). */
export function newRequestId(): string {
  return `web-${crypto.randomUUID()}`;
}

export function errorText(err: unknown): string {
  if (err instanceof ApiError) return `${err.message}${err.field ? ` (field: ${err.field})` : ""} [${err.code}]`;
  return err instanceof Error ? err.message : String(err);
}
