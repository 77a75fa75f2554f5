/**
 * The CLI's connection to the daemon. Locally it speaks HTTP over the unix socket in VIGIL_HOME (no token: the
 * socket's 0700 directory is the authentication). Remotely (`VIGIL_URL`, or `vigil login`) it sends a bearer
 * token, read from VIGIL_TOKEN or the 0600 config file — never from the command line. A token stored by
 * `vigil login` is bound to the URL it was stored for: it is sent to that daemon only, never to whatever
 * VIGIL_URL names (git's credential helpers key credentials by host the same way). For an https URL the login
 * also pins the daemon's certificate (trust on first use, or checked against `--fingerprint`): later requests
 * accept that certificate and no other.
 */
import { request as httpRequest, type IncomingMessage, type RequestOptions } from "node:http";
import { request as httpsRequest } from "node:https";
import { isIP } from "node:net";
import { connect as tlsConnect, type PeerCertificate } from "node:tls";
import { createReadStream, createWriteStream, existsSync, readFileSync, renameSync, rmSync, statSync } from "node:fs";
import { homedir } from "node:os";
import { join } from "node:path";
import { homeLayout, vigilHome } from "../paths.ts";

export class ApiError extends Error {
  constructor(
    readonly code: string,
    message: string,
    readonly status: number,
    readonly field?: string,
  ) {
    super(message);
  }
}

export interface ClientConfig {
  url?: string;
  token?: string;
  /** For an https URL: the daemon's certificate (PEM) and its SHA-256 fingerprint, pinned at login. */
  cert?: string;
  fingerprint?: string;
}

/** The certificate a remote target must present (the pin stored at login). */
export interface CertPin {
  cert: string;
  fingerprint: string;
}

export function clientConfigPath(env: NodeJS.ProcessEnv = process.env): string {
  return join(env.XDG_CONFIG_HOME ?? join(homedir(), ".config"), "vigil", "config.json");
}

function loadClientConfig(env: NodeJS.ProcessEnv): ClientConfig {
  const path = clientConfigPath(env);
  if (!existsSync(path)) return {};
  try {
    return JSON.parse(readFileSync(path, "utf8")) as ClientConfig;
  } catch {
    return {};
  }
}

/**
 * Whether two URLs name the same daemon: same scheme, host and port (the default port filled in) and the same
 * path up to a trailing slash. Anything else — another port, http instead of https — is another daemon.
 */
export function sameDaemon(a: URL, b: URL): boolean {
  const key = (u: URL) => `${u.protocol}//${u.hostname.toLowerCase()}:${u.port || (u.protocol === "https:" ? "443" : "80")}${u.pathname.replace(/\/+$/, "")}`;
  return key(a) === key(b);
}

export interface Target {
  socketPath?: string;
  /** VIGIL_HOME when the environment sets it (not the default home): the hint for starting its daemon names it. */
  home?: string;
  url?: URL;
  token?: string;
  pin?: CertPin;
}

/**
 * The daemon's URL from `source` (VIGIL_URL, `--url`, the login config): http(s)://HOST:PORT, or a one-line
 * usage error naming where it came from.
 */
export function daemonUrl(value: string, source: string): URL {
  let url: URL | undefined;
  try {
    url = new URL(value);
  } catch {
    url = undefined;
  }
  if (!url || (url.protocol !== "http:" && url.protocol !== "https:") || !url.hostname) {
    throw new ApiError("VIGIL_BAD_REQUEST", `Invalid ${source} ${JSON.stringify(value)}: it must be http(s)://HOST:PORT, e.g. http://127.0.0.1:7450`, 0, source);
  }
  return url;
}

/** Where to send requests: VIGIL_URL / login config (remote, with token) or the local socket. */
export function resolveTarget(env = process.env): Target {
  const cfg = loadClientConfig(env);
  const fromEnv = env.VIGIL_URL !== undefined && env.VIGIL_URL !== "";
  const url = fromEnv ? env.VIGIL_URL : env.VIGIL_HOME ? undefined : cfg.url;
  if (url) {
    const target = daemonUrl(url, fromEnv ? "VIGIL_URL" : `url in ${clientConfigPath(env)}`);
    // The stored token and pin belong to the URL they were stored for; another URL gets only VIGIL_TOKEN.
    const stored = cfg.url === undefined ? undefined : URL.canParse(cfg.url) ? new URL(cfg.url) : undefined;
    const forStored = stored !== undefined && sameDaemon(stored, target);
    const token = env.VIGIL_TOKEN ?? (forStored ? cfg.token : undefined);
    const pin = forStored && cfg.cert && cfg.fingerprint ? { cert: cfg.cert, fingerprint: cfg.fingerprint } : undefined;
    return { url: target, ...(token ? { token } : {}), ...(pin ? { pin } : {}) };
  }
  return { socketPath: homeLayout(vigilHome(env)).socket, ...(env.VIGIL_HOME ? { home: env.VIGIL_HOME } : {}) };
}

/** A word as the shell reads it: bare when it is only safe characters, else in single quotes. */
function shellWord(s: string): string {
  return /^[A-Za-z0-9_./:@%+=,-]+$/.test(s) ? s : `'${s.replace(/'/g, "'\\''")}'`;
}

function baseOptions(target: Target, method: string, path: string, headers: Record<string, string>): RequestOptions {
  const h: Record<string, string> = { ...headers };
  if (target.token) h.authorization = `Bearer ${target.token}`;
  if (target.socketPath) return { socketPath: target.socketPath, path, method, headers: h };
  const u = target.url!;
  const options: RequestOptions & { ca?: string; checkServerIdentity?: (host: string, cert: PeerCertificate) => Error | undefined } = { hostname: u.hostname, port: u.port, path: u.pathname.replace(/\/$/, "") + path, method, headers: h };
  const pin = target.pin;
  if (pin && u.protocol === "https:") {
    // The pinned (usually self-signed) certificate is the only CA, and it must be exactly that certificate:
    // the token is written only after this check passed.
    options.ca = pin.cert;
    // A fresh connection each time: a pooled or resumed TLS session would skip the fingerprint check.
    options.agent = false;
    options.checkServerIdentity = (_host, cert) =>
      cert.fingerprint256 === pin.fingerprint ? undefined : new Error(`the daemon's certificate ${cert.fingerprint256} is not the one pinned at login (${pin.fingerprint}); run \`vigil login\` again if it was replaced`);
  }
  return options;
}

/** The certificate a TLS server presents (not verified: for pinning on first use, or against a given fingerprint). */
export function fetchServerCert(url: URL): Promise<CertPin> {
  return new Promise((resolve, reject) => {
    const host = url.hostname.replace(/^\[(.*)\]$/, "$1");
    const socket = tlsConnect({ host, port: Number(url.port || 443), rejectUnauthorized: false, ...(isIP(host) ? {} : { servername: host }) }, () => {
      const cert = socket.getPeerCertificate();
      socket.end();
      if (!cert.raw) return reject(new ApiError("VIGIL_UNREACHABLE", `The server at ${url.href} presented no certificate`, 0));
      const b64 = cert.raw.toString("base64").replace(/(.{64})/g, "$1\n");
      resolve({ cert: `-----BEGIN CERTIFICATE-----\n${b64.replace(/\n$/, "")}\n-----END CERTIFICATE-----\n`, fingerprint: cert.fingerprint256 });
    });
    socket.setTimeout(10_000, () => socket.destroy(new Error("timed out")));
    socket.on("error", (err: NodeJS.ErrnoException) => reject(new ApiError("VIGIL_UNREACHABLE", `Cannot reach the vigil daemon at ${url.href}: ${err.code ?? err.message}`, 0)));
  });
}

function send(target: Target, options: RequestOptions, body: string | undefined, onResponse: (res: IncomingMessage) => void, onError: (err: Error) => void) {
  const req = (target.url?.protocol === "https:" ? httpsRequest : httpRequest)(options, onResponse);
  req.on("error", onError);
  if (body !== undefined) req.write(body);
  req.end();
  return req;
}

function unreachable(target: Target, err: NodeJS.ErrnoException): ApiError {
  const where = target.socketPath ?? target.url?.href ?? "?";
  // `npm start` serves the default home only; a custom VIGIL_HOME needs its own daemon.
  const start = target.home !== undefined ? `VIGIL_HOME=${shellWord(target.home)} vigil serve` : "npm start";
  const hint = target.socketPath ? ` (is \`vigil serve\` running for this VIGIL_HOME? start it with \`${start}\`)` : "";
  return new ApiError("VIGIL_UNREACHABLE", `Cannot reach the vigil daemon at ${where}: ${err.code ?? err.message}${hint}`, 0);
}

/** One JSON request; resolves with the parsed body or rejects with the API's error. */
export function call<T = unknown>(method: string, path: string, body?: unknown, target = resolveTarget(), options: { requestId?: string } = {}): Promise<T> {
  return new Promise((resolve, reject) => {
    const payload = body === undefined ? undefined : JSON.stringify(body);
    const headers: Record<string, string> = { accept: "application/json" };
    if (options.requestId) headers["x-request-id"] = options.requestId;
    if (payload !== undefined) headers["content-type"] = "application/json";
    const attempt = (retry: boolean): void => {
    const req = send(
      target,
      baseOptions(target, method, path, headers),
      payload,
      (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () => {
          const text = Buffer.concat(chunks).toString("utf8");
          const status = res.statusCode ?? 0;
          const type = res.headers["content-type"] ?? "";
          if (status >= 200 && status < 300) {
            if (!type.includes("json")) return resolve(text as T);
            try {
              return resolve(JSON.parse(text) as T);
            } catch {
              return reject(new ApiError("VIGIL_INTERNAL", "The daemon sent a malformed response", status));
            }
          }
          reject(apiError(text, status, target));
        });
      },
      (err) => {
        // A pooled keep-alive socket the daemon closed while it sat idle fails on first use, before the daemon
        // read anything: sending once more on a fresh socket is safe (and what Node's http docs advise).
        const code = (err as NodeJS.ErrnoException).code;
        if (retry && req.reusedSocket && (code === "EPIPE" || code === "ECONNRESET")) return attempt(false);
        reject(unreachable(target, err as NodeJS.ErrnoException));
      },
    );
    };
    attempt(true);
  });
}

/** A streaming GET (server-sent events, exports): calls `onData` per chunk until the stream ends. */
export function stream(path: string, onData: (chunk: string) => void, target = resolveTarget(), signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return resolve();
    const req = send(
      target,
      baseOptions(target, "GET", path, { accept: "*/*" }),
      undefined,
      (res) => {
        if ((res.statusCode ?? 0) >= 300) return void errorFrom(res, target).then(reject);
        res.setEncoding("utf8");
        res.on("data", onData);
        res.on("end", resolve);
      },
      (err) => (signal?.aborted ? resolve() : reject(unreachable(target, err as NodeJS.ErrnoException))),
    );
    // Aborting ends the stream on our side (the connection goes, so nothing keeps the process alive).
    signal?.addEventListener("abort", () => {
      req.destroy();
      resolve();
    }, { once: true });
  });
}

/** One server-sent event: its name, its `data:` line and its `id:` when it has one. */
export interface SseEvent {
  event: string;
  data: string;
  id?: string;
}

/** Feeds chunks of an SSE stream in, gets the complete events out (blocks end at a blank line; partial ones wait). */
export function sseSplitter(): (chunk: string) => SseEvent[] {
  let buf = "";
  return (chunk) => {
    buf += chunk;
    const out: SseEvent[] = [];
    for (let i; (i = buf.indexOf("\n\n")) >= 0; ) {
      const block = buf.slice(0, i);
      buf = buf.slice(i + 2);
      const event = /^event: (.*)$/m.exec(block)?.[1];
      const data = /^data: (.*)$/m.exec(block)?.[1];
      const id = /^id: (.*)$/m.exec(block)?.[1];
      if (event && data !== undefined) out.push({ event, data, ...(id ? { id } : {}) });
    }
    return out;
  };
}

/**
 * Server-sent events from `path` (the daemon's `/v1/events`): calls `onEvent` with each event's name and its
 * `data:` line, until the stream ends.
 */
export function events(path: string, onEvent: (event: string, data: string) => void, target = resolveTarget(), signal?: AbortSignal): Promise<void> {
  const split = sseSplitter();
  return stream(
    path,
    (chunk) => {
      for (const e of split(chunk)) if (e.data) onEvent(e.event, e.data);
    },
    target,
    signal,
  );
}

/** Opens the console upgrade and resolves with the raw duplex socket. */
export function upgrade(path: string, target = resolveTarget()): Promise<import("node:net").Socket> {
  return new Promise((resolve, reject) => {
    const req = (target.url?.protocol === "https:" ? httpsRequest : httpRequest)(
      baseOptions(target, "GET", path, { connection: "Upgrade", upgrade: "vigil-console" }),
    );
    req.on("upgrade", (_res, socket, head) => {
      if (head.length > 0) socket.unshift(head);
      resolve(socket);
    });
    req.on("response", (res) => void errorFrom(res, target).then(reject));
    req.on("error", (err) => reject(unreachable(target, err as NodeJS.ErrnoException)));
    req.end();
  });
}

/**
 * The API's `{error: {code, message, field?}}` body as an ApiError. Anything else did not come from a vigil
 * daemon (a web server or proxy at VIGIL_URL): one line saying so, never its body.
 */
export function apiError(text: string, status: number, target?: Target): ApiError {
  let e: { code?: unknown; message?: unknown; field?: unknown } | undefined;
  try {
    e = (JSON.parse(text) as { error?: typeof e }).error;
  } catch {
    e = undefined;
  }
  if (e && typeof e.code === "string" && typeof e.message === "string") return new ApiError(e.code, e.message, status, typeof e.field === "string" ? e.field : undefined);
  const where = target?.socketPath ?? target?.url?.href ?? "the daemon's address";
  return new ApiError("VIGIL_UNREACHABLE", `The server at ${where} is not a vigil daemon (HTTP ${status})`, status);
}

function errorFrom(res: IncomingMessage, target?: Target): Promise<ApiError> {
  return new Promise((resolve) => {
    let text = "";
    res.on("data", (c: Buffer) => {
      if (text.length < 65536) text += c.toString();
    });
    res.on("end", () => resolve(apiError(text, res.statusCode ?? 0, target)));
  });
}

/**
 * POSTs `body` as JSON and writes the binary answer to `out` (created 0600 next to it, renamed into place when
 * complete, so a failed download never leaves a half file that looks whole).
 */
export function download(path: string, body: unknown, out: string, options: { requestId?: string; headers?: Record<string, string>; onBytes?: (done: number, total: number) => void; method?: "GET" | "POST" } = {}, target = resolveTarget()): Promise<number> {
  return new Promise((resolve, reject) => {
    const headers: Record<string, string> = { "content-type": "application/json", ...options.headers };
    if (options.requestId) headers["x-request-id"] = options.requestId;
    send(
      target,
      baseOptions(target, options.method ?? "POST", path, headers),
      options.method === "GET" ? undefined : JSON.stringify(body),
      (res) => {
        if ((res.statusCode ?? 0) >= 300) return void errorFrom(res, target).then(reject);
        const total = Number(res.headers["content-length"] ?? 0);
        const tmp = `${out}.part`;
        const file = createWriteStream(tmp, { mode: 0o600 });
        file.on("error", (err: NodeJS.ErrnoException) => {
          res.destroy();
          rmSync(tmp, { force: true });
          reject(new ApiError("VIGIL_HOST", `Cannot write ${JSON.stringify(out)}: ${err.code ?? err.message}`, 0, "output"));
        });
        let done = 0;
        res.on("data", (c: Buffer) => {
          done += c.length;
          options.onBytes?.(done, total);
        });
        res.pipe(file);
        res.on("aborted", () => reject(new ApiError("VIGIL_INTERNAL", "The download was cut off", 0)));
        file.on("finish", () => {
          if (total && done !== total) {
            rmSync(tmp, { force: true });
            return reject(new ApiError("VIGIL_INTERNAL", `The download was cut off after ${done} of ${total} bytes`, 0));
          }
          renameSync(tmp, out);
          resolve(done);
        });
      },
      (err) => reject(unreachable(target, err as NodeJS.ErrnoException)),
    );
  });
}

/**
 * Checks that the file a command reads (given as `what`, e.g. `<file>`) exists and is a regular file; a
 * one-line usage error otherwise.
 */
export function inputFile(path: string, what: string): import("node:fs").Stats {
  let st;
  try {
    st = statSync(path);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const why = code === "ENOENT" ? "the file does not exist" : code === "EACCES" ? "permission denied" : `cannot read it (${code ?? messageOfUnknown(err)})`;
    throw new ApiError("VIGIL_BAD_REQUEST", `Invalid ${what} ${JSON.stringify(path)}: ${why}`, 0, what);
  }
  if (!st.isFile()) throw new ApiError("VIGIL_BAD_REQUEST", `Invalid ${what} ${JSON.stringify(path)}: not a regular file`, 0, what);
  return st;
}

function messageOfUnknown(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** POSTs the file at `file` as the request body and resolves with the JSON answer. */
export function upload<T = unknown>(path: string, file: string, options: { requestId?: string; contentType?: string; onBytes?: (done: number, total: number) => void } = {}, target = resolveTarget()): Promise<T> {
  return new Promise((resolve, reject) => {
    const total = inputFile(file, "<file>").size;
    const headers: Record<string, string> = { "content-type": options.contentType ?? "application/x-vigil-bundle", "content-length": String(total), accept: "application/json" };
    if (options.requestId) headers["x-request-id"] = options.requestId;
    const req = (target.url?.protocol === "https:" ? httpsRequest : httpRequest)(baseOptions(target, "POST", path, headers), (res) => {
      if ((res.statusCode ?? 0) >= 300) return void errorFrom(res, target).then(reject);
      let text = "";
      res.on("data", (c: Buffer) => (text += c.toString()));
      res.on("end", () => resolve(JSON.parse(text) as T));
    });
    req.on("error", (err) => reject(unreachable(target, err as NodeJS.ErrnoException)));
    let done = 0;
    const input = createReadStream(file);
    input.on("data", (c) => {
      done += c.length;
      options.onBytes?.(done, total);
    });
    input.pipe(req);
  });
}
