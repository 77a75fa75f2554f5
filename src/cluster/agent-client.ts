/**
 * The manager's client of one agent (docs/cluster.md): JSON over HTTPS with the manager's client certificate.
 * The agent is trusted only if its certificate chains to the vigil CA (the system's roots are not used) AND says
 * `OU=agent, CN=<the agent's name>`: another agent's perfectly valid certificate is refused, so a host that took
 * over an address cannot answer for the agent that was there. The agent's answers are bounded (16 MiB, stream
 * lines 1 MiB) and an agent's error body becomes the same VigilError the agent raised; an agent that does not
 * answer is a VIGIL_HOST error naming it.
 */
import { X509Certificate } from "node:crypto";
import { Agent, request as httpsRequest } from "node:https";
import type { IncomingHttpHeaders, IncomingMessage } from "node:http";
import { Transform, pipeline, type Duplex, type Readable } from "node:stream";
import { isIP } from "node:net";
import type { PeerCertificate } from "node:tls";
import { StringDecoder } from "node:string_decoder";
import { ERROR_STATUS, VigilError, messageOf, q, type ErrorCode } from "../errors.ts";
import { subjectOf } from "./ca.ts";
import { ACTOR_HEADER, EPOCH_HEADER, type CertBundle, type DelegatedActor } from "./types.ts";

export interface AgentClientOptions {
  /** The agent's cluster listener, `IP:PORT` (`[v6]:PORT` for IPv6). */
  address: string;
  /** The name its certificate must carry (`CN=<agentName>`). */
  agentName: string;
  /** The manager's client certificate (`OU=manager`), with the vigil CA. */
  bundle: CertBundle;
  /**
   * The SHA-256 fingerprint of the certificate issued to this host (HostRecord.certFingerprint): when given, only
   * that very certificate is accepted, so one issued again under the same name (or a host removed and re-added)
   * does not answer for it.
   */
  certFingerprint?: string;
  /** Default per-request timeout (ms); 30 s. */
  timeoutMs?: number;
  /** Largest answer accepted (bytes); 16 MiB. */
  maxBodyBytes?: number;
}

export interface AgentRequestOptions {
  /** JSON request body. */
  body?: unknown;
  /** The user the manager authenticated, for the agent's Guard and audit log. */
  actor?: DelegatedActor;
  /** The host's lease epoch (fencing token). */
  epoch?: number;
  signal?: AbortSignal;
  timeoutMs?: number;
}

export interface AgentStreamOptions {
  /** GET unless given (a command that answers with its progress, e.g. a migration, is a POST). */
  method?: string;
  /** JSON request body. */
  body?: unknown;
  actor?: DelegatedActor;
  epoch?: number;
  signal?: AbortSignal;
  /** The stream fails if nothing arrives for this long (ms); 30 s. */
  idleTimeoutMs?: number;
  /** Longest line accepted (bytes); 1 MiB. */
  maxLineBytes?: number;
}

export interface AgentRelayOptions {
  /** The request's body as bytes (a bundle being imported), sent as it arrives; none for a GET. */
  body?: Readable | undefined;
  /** Request headers passed on as they are (content-type, content-length, x-request-id, …). */
  headers?: Record<string, string>;
  actor?: DelegatedActor;
  epoch?: number;
  signal?: AbortSignal;
  /** The exchange fails if no byte moves either way for this long (ms); 30 s. */
  idleTimeoutMs?: number;
}

/** An answer relayed as it is: its status, its headers and its body to read (or destroy) as it arrives. */
export interface RelayedAnswer {
  status: number;
  headers: IncomingHttpHeaders;
  body: Readable;
}

const DEFAULT_TIMEOUT_MS = 30_000;
const MAX_BODY_BYTES = 16 * 1024 * 1024;
const MAX_LINE_BYTES = 1024 * 1024;
/** Errors of a peer that is not there (or not listening) at all. */
const UNREACHABLE = new Set(["ECONNREFUSED", "EHOSTUNREACH", "ENETUNREACH", "ETIMEDOUT", "ECONNRESET", "EPIPE", "EADDRNOTAVAIL"]);

/** An answer whose head has arrived (see AgentClient.open). */
interface Opened {
  message: IncomingMessage;
  /** Ends the exchange with `err` (every waiter sees it). */
  fail: (err: Error) => void;
  /** Registers the one waiter for a failure (called at once if it already failed). */
  onFailure: (f: (err: Error) => void) => void;
  /** Re-arms a stream's idle timer. */
  touch: () => void;
  done: () => void;
}

/** The error checkServerIdentity returns for a chain that verified but names someone else. */
class WrongAgent extends Error {}

export class AgentClient {
  readonly address: string;
  readonly agentName: string;
  private readonly host: string;
  private readonly port: number;
  private readonly agent: Agent;
  private readonly timeoutMs: number;
  private readonly maxBodyBytes: number;

  constructor(options: AgentClientOptions) {
    const { host, port } = parseAddress(options.address);
    this.address = options.address;
    this.agentName = options.agentName;
    this.host = host;
    this.port = port;
    this.timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    this.maxBodyBytes = options.maxBodyBytes ?? MAX_BODY_BYTES;
    const expected = options.agentName;
    const pinned = options.certFingerprint?.toUpperCase();
    this.agent = new Agent({
      keepAlive: true,
      ca: [options.bundle.caPem],
      cert: options.bundle.certPem,
      key: options.bundle.keyPem,
      minVersion: "TLSv1.3",
      rejectUnauthorized: true,
      // Called only once the chain has verified against the vigil CA. The address is not what identifies an
      // agent (it may move, or be reached through a relay): its name in the certificate is.
      checkServerIdentity: (_host: string, peer: PeerCertificate) => {
        try {
          const cert = new X509Certificate(peer.raw);
          const { role, name } = subjectOf(cert);
          if (role !== "agent" || name !== expected) return new WrongAgent(`its certificate is OU=${role}, CN=${name}, not OU=agent, CN=${expected}`);
          if (pinned !== undefined && cert.fingerprint256 !== pinned) {
            return new WrongAgent(`its certificate (${cert.fingerprint256}) is not the one issued to it (${pinned})`);
          }
          return undefined;
        } catch (err) {
          return new WrongAgent(messageOf(err));
        }
      },
    });
  }

  /** One JSON request; resolves with the parsed answer (undefined for an empty one). */
  async request<T = unknown>(method: string, path: string, options: AgentRequestOptions = {}): Promise<T> {
    const payload = options.body === undefined ? undefined : JSON.stringify(options.body);
    const timeoutMs = options.timeoutMs ?? this.timeoutMs;
    const res = await this.open(method, path, { ...options, payload, accept: "application/json", timeoutMs, whole: true });
    try {
      const text = await this.readBody(res);
      if (res.message.statusCode !== undefined && res.message.statusCode >= 400) throw this.agentError(res.message.statusCode, text);
      if (text.trim() === "") return undefined as T;
      try {
        return JSON.parse(text) as T;
      } catch {
        throw new VigilError("VIGIL_HOST", `Agent ${q(this.agentName)} at ${this.address} answered ${method} ${path} with something that is not JSON`);
      }
    } finally {
      res.done();
    }
  }

  /**
   * A long answer read line by line (newline-delimited JSON or server-sent events): `onLine` gets every line
   * (without its end of line, empty lines included: they end an SSE event) until the agent ends the answer.
   */
  async stream(path: string, onLine: (line: string) => void, options: AgentStreamOptions = {}): Promise<void> {
    const maxLine = options.maxLineBytes ?? MAX_LINE_BYTES;
    const payload = options.body === undefined ? undefined : JSON.stringify(options.body);
    const res = await this.open(options.method ?? "GET", path, { ...options, payload, accept: "application/x-ndjson, text/event-stream", timeoutMs: options.idleTimeoutMs ?? this.timeoutMs, whole: false });
    try {
      const status = res.message.statusCode ?? 0;
      if (status >= 400) throw this.agentError(status, await this.readBody(res));
      await new Promise<void>((resolve, reject) => {
        const decoder = new StringDecoder("utf8");
        let partial = "";
        res.onFailure(reject);
        res.message.on("data", (chunk: Buffer) => {
          res.touch();
          partial += decoder.write(chunk);
          let nl: number;
          try {
            while ((nl = partial.indexOf("\n")) >= 0) {
              const line = partial.slice(0, nl);
              partial = partial.slice(nl + 1);
              onLine(line.endsWith("\r") ? line.slice(0, -1) : line);
            }
          } catch (err) {
            res.fail(err instanceof Error ? err : new Error(String(err)));
            return;
          }
          if (Buffer.byteLength(partial) > maxLine) {
            res.fail(new VigilError("VIGIL_HOST", `Agent ${q(this.agentName)} at ${this.address} sent a line longer than ${maxLine} bytes on ${path}`));
          }
        });
        res.message.on("end", () => {
          const rest = partial + decoder.end();
          try {
            if (rest !== "") onLine(rest);
          } catch (err) {
            return reject(err);
          }
          resolve();
        });
      });
    } finally {
      res.done();
    }
  }

  /**
   * One exchange of bytes rather than JSON (a bundle exported or imported, a recording's tar, Prometheus text): the
   * request body is streamed to the agent as it arrives, and the answer comes back with its head as soon as the
   * agent sends it, its body unread. Nothing is buffered or bounded here: the caller passes the body on (with
   * back-pressure) or reads it with its own bound. The agent's error answers are relayed too (status and body), as
   * the caller decides what to do with them; only a transport failure is a VIGIL_HOST error.
   */
  async relay(method: string, path: string, options: AgentRelayOptions = {}): Promise<RelayedAnswer> {
    const res = await this.open(method, path, { ...options, payload: options.body, accept: options.headers?.accept ?? "*/*", timeoutMs: options.idleTimeoutMs ?? this.timeoutMs, whole: false });
    const { message } = res;
    // Every chunk re-arms the idle timer on its way through (a 'data' listener on the message itself would start it
    // flowing before the caller reads); destroying the body (the caller's client gone) ends the agent's answer too.
    const body = new Transform({
      transform(chunk: Buffer, _enc, next) {
        res.touch();
        next(null, chunk);
      },
    });
    pipeline(message, body, () => res.done());
    // A failure mid-body (the agent gone, idle too long) reaches whoever reads the body as its error.
    res.onFailure((err) => body.destroy(err));
    return { status: message.statusCode ?? 0, headers: message.headers, body };
  }

  /**
   * An HTTP upgrade (the serial console: `Upgrade: vigil-console`) over the same mutual TLS, for `actor`: resolves
   * with the raw byte stream to the agent once it answered 101 (and the bytes that came with the answer's head);
   * an answer that is not an upgrade becomes the agent's error. `timeoutMs` bounds the wait for the answer only.
   */
  upgrade(path: string, protocol: string, options: { actor?: DelegatedActor | undefined; epoch?: number | undefined; timeoutMs?: number | undefined } = {}): Promise<{ socket: Duplex; head: Buffer }> {
    if (!path.startsWith("/")) throw new VigilError("VIGIL_BAD_REQUEST", `Invalid agent path ${q(path)}: must start with "/"`, { field: "path" });
    const headers: Record<string, string> = { connection: "Upgrade", upgrade: protocol };
    if (options.actor) headers[ACTOR_HEADER] = JSON.stringify(options.actor);
    if (options.epoch !== undefined) headers[EPOCH_HEADER] = String(options.epoch);
    const timeoutMs = options.timeoutMs ?? this.timeoutMs;
    return new Promise((resolve, reject) => {
      const req = httpsRequest({ host: this.host, port: this.port, method: "GET", path, headers, agent: this.agent });
      let timedOut = false;
      const timer = setTimeout(() => {
        timedOut = true;
        req.destroy();
        reject(this.notAnswering(`no answer within ${timeoutMs} ms`));
      }, timeoutMs);
      req.on("upgrade", (_res, socket, head) => {
        clearTimeout(timer);
        // An upgrade that comes after the caller gave up is nobody's: closed, never left open.
        if (timedOut) return void socket.destroy();
        resolve({ socket, head });
      });
      req.on("response", (message) => {
        clearTimeout(timer);
        const chunks: Buffer[] = [];
        let size = 0;
        message.on("data", (c: Buffer) => {
          size += c.length;
          if (size <= 65536) chunks.push(c);
        });
        message.on("end", () => reject(this.agentError(message.statusCode ?? 0, Buffer.concat(chunks).toString("utf8"))));
        message.on("error", (err) => reject(this.transportError(err)));
      });
      req.on("error", (err) => {
        clearTimeout(timer);
        reject(this.transportError(err));
      });
      req.end();
    });
  }

  /** Closes the kept-alive connections. */
  close(): void {
    this.agent.destroy();
  }

  /**
   * Sends the request and waits for the answer's head. The returned `fail` destroys the request with an error
   * (which the reader of the body sees); `done` clears the timer and the abort listener.
   */
  private open(
    method: string,
    path: string,
    o: { payload?: string | Readable | undefined; headers?: Record<string, string> | undefined; actor?: DelegatedActor | undefined; epoch?: number | undefined; signal?: AbortSignal | undefined; accept: string; timeoutMs: number; whole: boolean },
  ): Promise<Opened> {
    if (!path.startsWith("/")) throw new VigilError("VIGIL_BAD_REQUEST", `Invalid agent path ${q(path)}: must start with "/"`, { field: "path" });
    if (o.signal?.aborted) return Promise.reject(abortReason(o.signal));
    const headers: Record<string, string> = { ...o.headers, accept: o.accept };
    if (typeof o.payload === "string") {
      headers["content-type"] = "application/json";
      headers["content-length"] = String(Buffer.byteLength(o.payload));
    }
    if (o.actor) headers[ACTOR_HEADER] = JSON.stringify(o.actor);
    if (o.epoch !== undefined) headers[EPOCH_HEADER] = String(o.epoch);
    return new Promise((resolve, reject) => {
      let failure: Error | undefined;
      let onFailure: ((err: Error) => void) | undefined;
      let answered = false;
      const req = httpsRequest({ host: this.host, port: this.port, method, path, headers, agent: this.agent });
      const fail = (err: Error) => {
        if (failure) return;
        failure = err;
        clearTimeout(timer);
        // Without the error: a socket whose answer was already read may have no error listener left, and the
        // waiters get `err` from here anyway.
        req.destroy();
        if (!answered) reject(err);
        onFailure?.(err);
      };
      let timer: NodeJS.Timeout;
      const arm = () => {
        clearTimeout(timer);
        timer = setTimeout(() => fail(this.notAnswering(`no answer within ${o.timeoutMs} ms`)), o.timeoutMs);
      };
      arm();
      const onAbort = () => fail(abortReason(o.signal!));
      o.signal?.addEventListener("abort", onAbort, { once: true });
      const done = () => {
        clearTimeout(timer);
        o.signal?.removeEventListener("abort", onAbort);
      };
      req.on("error", (err) => fail(failure ?? this.transportError(err)));
      req.on("response", (message) => {
        answered = true;
        // A request's timeout covers its whole body; a stream's is an idle timeout, re-armed by every chunk.
        if (!o.whole) arm();
        message.on("error", (err) => fail(failure ?? this.transportError(err)));
        message.on("aborted", () => fail(failure ?? this.notAnswering("the connection closed mid-answer")));
        resolve({ message, fail, onFailure: (f) => (failure ? f(failure) : (onFailure = f)), touch: () => (o.whole ? undefined : arm()), done });
      });
      if (typeof o.payload === "string" || o.payload === undefined) return void req.end(o.payload);
      // A streamed body: each chunk sent is progress (an upload the agent reads slowly is not idle), and a body
      // that fails (the client gone) ends the exchange.
      const body = o.payload;
      body.on("data", () => (o.whole ? undefined : arm()));
      body.once("error", (err) => fail(err));
      body.pipe(req);
    });
  }

  private readBody(res: Opened): Promise<string> {
    const { message, fail } = res;
    return new Promise((resolve, reject) => {
      res.onFailure(reject);
      const chunks: Buffer[] = [];
      let size = 0;
      message.on("data", (chunk: Buffer) => {
        size += chunk.length;
        if (size > this.maxBodyBytes) {
          const err = new VigilError("VIGIL_HOST", `Agent ${q(this.agentName)} at ${this.address} sent an answer larger than ${this.maxBodyBytes} bytes`);
          fail(err);
          reject(err);
          return;
        }
        chunks.push(chunk);
      });
      message.on("end", () => resolve(Buffer.concat(chunks).toString("utf8")));
      message.on("error", reject);
      message.on("close", () => {
        if (!message.complete) reject(this.notAnswering("the connection closed mid-answer"));
      });
    });
  }

  private agentError(status: number, text: string): VigilError {
    return agentErrorOf(status, text, `Agent ${q(this.agentName)} at ${this.address}`);
  }

  private notAnswering(why: string): VigilError {
    return new VigilError("VIGIL_HOST", `agent ${this.agentName} at ${this.address} is not answering: ${why}`);
  }

  private transportError(err: Error): VigilError {
    const code = (err as NodeJS.ErrnoException).code ?? "";
    if (err instanceof WrongAgent) {
      return new VigilError("VIGIL_HOST", `Cannot trust agent ${this.agentName} at ${this.address}: ${err.message}`, { cause: err });
    }
    // OpenSSL's verification codes as node names them (CERT_HAS_EXPIRED, INVALID_PURPOSE, …).
    if (/CERT|SELF_SIGNED|UNABLE_TO_|INVALID_(CA|PURPOSE)|PATH_LENGTH|HOSTNAME/.test(code) && !code.startsWith("ERR_SSL_")) {
      return new VigilError("VIGIL_HOST", `Cannot trust agent ${this.agentName} at ${this.address}: its certificate does not verify against the vigil CA (${code}: ${err.message})`, { cause: err });
    }
    if (code.startsWith("ERR_SSL_") && /ALERT/.test(code)) {
      return new VigilError("VIGIL_HOST", `agent ${this.agentName} at ${this.address} refused the manager's certificate (${code})`, { cause: err });
    }
    if (UNREACHABLE.has(code)) return new VigilError("VIGIL_HOST", `agent ${this.agentName} at ${this.address} is not answering: ${code} (${err.message})`, { cause: err });
    return new VigilError("VIGIL_HOST", `agent ${this.agentName} at ${this.address} is not answering: ${err.message}`, { cause: err });
  }
}

/** An agent's `{error: {code, message, field}}` as the same VigilError; anything else as VIGIL_HOST naming `who`. */
export function agentErrorOf(status: number, text: string, who: string): VigilError {
  try {
    const body = JSON.parse(text) as { error?: { code?: unknown; message?: unknown; field?: unknown } };
    const e = body.error;
    if (e && typeof e.code === "string" && Object.hasOwn(ERROR_STATUS, e.code) && typeof e.message === "string") {
      return new VigilError(e.code as ErrorCode, e.message, typeof e.field === "string" ? { field: e.field } : {});
    }
  } catch {
    // not JSON: reported below
  }
  return new VigilError("VIGIL_HOST", `${who} answered ${status}: ${text.slice(0, 200).replace(/\s+/g, " ").trim() || "(no body)"}`);
}

/** `IP:PORT` or `[IPv6]:PORT`; VIGIL_BAD_REQUEST naming `address` otherwise. */
export function parseAddress(address: string): { host: string; port: number } {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([0-9.]+)):(\d{1,5})$/.exec(address);
  const host = m?.[1] ?? m?.[2];
  const port = Number(m?.[3]);
  if (!m || !host || isIP(host) === 0 || !Number.isInteger(port) || port < 1 || port > 65535) {
    throw new VigilError("VIGIL_BAD_REQUEST", `Invalid agent address ${q(address)}: use IP:PORT (e.g. 10.0.0.2:7451, or [fd00::2]:7451)`, { field: "address" });
  }
  return { host, port };
}

function abortReason(signal: AbortSignal): Error {
  return signal.reason instanceof Error ? signal.reason : new DOMException("The request was aborted", "AbortError");
}
