/**
 * The built web console (web/, built by `npm run build` into dist/web): served at `/` on the same origin as the API,
 * so the session cookie is same-site and the CSP can say `'self'` for everything. Files are public (the app holds
 * no data; every number it shows comes from the API, which decides). A request path is normalised and must stay
 * inside the directory; only regular files are served; a path without an extension that names no file is an SPA
 * route and gets index.html.
 */
import { lstatSync, readFileSync, realpathSync, statSync } from "node:fs";
import { extname, join, resolve, sep } from "node:path";
import { fileURLToPath } from "node:url";
import { VigilError } from "../errors.ts";

/** dist/web below the package root (this file is src/api/ or, built, dist/api/), or VIGIL_WEB_DIR. */
export function webDir(env: NodeJS.ProcessEnv = process.env): string {
  return env.VIGIL_WEB_DIR ?? resolve(fileURLToPath(new URL(".", import.meta.url)), "../../dist/web");
}

/** The Content-Security-Policy of every page and file: nothing from elsewhere, no framing, no inline scripts. */
export const CONTENT_SECURITY_POLICY = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

const TYPES: Record<string, string> = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".mjs": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".svg": "image/svg+xml",
  ".png": "image/png",
  ".ico": "image/x-icon",
  ".woff2": "font/woff2",
  ".json": "application/json",
  ".map": "application/json",
  ".txt": "text/plain; charset=utf-8",
};

/** Files larger than this are not served (the built app's largest chunk is far smaller). */
const MAX_FILE_BYTES = 32 * 1024 * 1024;

/** Whether a request is for the web console rather than the API: a GET or HEAD outside /v1, /openapi.json and /metrics. */
export function isStaticRequest(method: string, path: string): boolean {
  if (method !== "GET" && method !== "HEAD") return false;
  return !(path === "/v1" || path.startsWith("/v1/") || path === "/openapi.json" || path === "/metrics");
}

const SECURITY_HEADERS = {
  "content-security-policy": CONTENT_SECURITY_POLICY,
  "x-content-type-options": "nosniff",
  "referrer-policy": "no-referrer",
  "x-frame-options": "DENY",
};

function errorResponse(err: VigilError): Response {
  return new Response(JSON.stringify({ error: { code: err.code, message: err.message } }), { status: err.status, headers: { ...SECURITY_HEADERS, "content-type": "application/json", "cache-control": "no-cache" } });
}

/** A regular file strictly inside `root` (both real paths), or undefined. */
function regularFileInside(root: string, candidate: string): string | undefined {
  try {
    const real = realpathSync(candidate);
    if (!real.startsWith(root + sep)) return undefined;
    const st = statSync(real);
    return st.isFile() && st.size <= MAX_FILE_BYTES ? real : undefined;
  } catch {
    return undefined;
  }
}

/**
 * The response for a static request to `rawPath` (the URL's path, still percent-encoded), from `dir`.
 * `..` (encoded or not), backslashes and NUL are refused outright (400), not resolved.
 */
export function serveStatic(dir: string, rawPath: string, method: string): Response {
  let path: string;
  try {
    path = decodeURIComponent(rawPath);
  } catch {
    return errorResponse(new VigilError("VIGIL_BAD_REQUEST", "Bad request: the path is not valid percent-encoding"));
  }
  const segments = path.split("/");
  if (segments.some((s) => s === ".." || s === ".") || path.includes("\\") || path.includes("\0")) {
    return errorResponse(new VigilError("VIGIL_BAD_REQUEST", "Bad request: a path may not contain \"..\", \".\", backslashes or NUL"));
  }
  let root: string;
  try {
    root = realpathSync(dir);
    if (!lstatSync(join(root, "index.html")).isFile()) throw new Error("no index.html");
  } catch {
    return errorResponse(new VigilError("VIGIL_UNAVAILABLE", "The web console is not built: run `npm run build`"));
  }
  const rel = segments.filter((s) => s !== "").join("/");
  let file = rel === "" ? join(root, "index.html") : regularFileInside(root, join(root, rel));
  if (file === undefined && extname(rel) === "") file = join(root, "index.html"); // an SPA route
  if (file === undefined) return errorResponse(new VigilError("VIGIL_NOT_FOUND", `No such file: ${rel.slice(0, 200)}`));
  const isIndex = file === join(root, "index.html");
  const immutable = !isIndex && rel.startsWith("assets/");
  const body = readFileSync(file);
  const headers = {
    ...SECURITY_HEADERS,
    "content-type": TYPES[extname(file).toLowerCase()] ?? "application/octet-stream",
    "content-length": String(body.length),
    // Vite names every file under assets/ by its content hash: a changed file is a new name.
    "cache-control": immutable ? "public, max-age=31536000, immutable" : "no-cache",
  };
  return new Response(method === "HEAD" ? null : body, { status: 200, headers });
}
