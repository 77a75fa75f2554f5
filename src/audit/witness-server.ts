/**
 * `vigil witness serve`: a tiny HTTP witness for one site's audit log. It accepts a signed tree head only if
 * the site key signed it and a consistency proof shows it extends the last head it accepted (or it is the first,
 * or the same); it then appends the head to DIR/heads.jsonl (O_APPEND, fsync) and co-signs it with its own key
 * (DIR/witness-ed25519.pem). A truncated or rewritten log can therefore never get a new co-signature.
 *
 *   GET  /v1/witness/head   → {head, cosignature, witnessKeyId} of the last accepted head (404 before the first)
 *   POST /v1/witness/heads  ← {head, fromSize, proof}  → 200 {witnessKeyId, cosignature, size} | 409 {error, latestSize}
 */
import { createPublicKey, type KeyObject } from "node:crypto";
import { createServer, type IncomingMessage, type Server } from "node:http";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { canonicalJson } from "./canonical-json.ts";
import { treeHeadOf, verifyTreeHead, type TreeHead } from "./chain.ts";
import { parsePath, verifyConsistency } from "./merkle.ts";
import { keyIdOf, loadOrCreateSiteKey, type SiteKey } from "./site-key.ts";
import { appendLineDurably, lastLine } from "./witness.ts";

export const COSIGN_CONTEXT = "vigil/audit/witness-cosign/v1";
const MAX_BODY = 64 * 1024;

export function cosignBytes(head: TreeHead): Buffer {
  return Buffer.concat([Buffer.from(`${COSIGN_CONTEXT}\0`), Buffer.from(canonicalJson(head))]);
}

interface Accepted {
  head: TreeHead;
  cosignature: string;
  witnessKeyId: string;
}

export class WitnessServer {
  private latest: Accepted | undefined;
  private readonly key: SiteKey;
  private readonly siteKeyId: string;
  private readonly log: string;

  constructor(
    dir: string,
    private readonly siteKey: KeyObject,
  ) {
    this.key = loadOrCreateSiteKey(join(dir, "keys"));
    this.siteKeyId = keyIdOf(siteKey);
    this.log = join(dir, "heads.jsonl");
    const line = lastLine(this.log);
    if (line) this.latest = JSON.parse(line) as Accepted;
  }

  get witnessKeyId(): string {
    return this.key.keyId;
  }

  /** Decides on one submission; returns the HTTP status and body. */
  submit(body: unknown): { status: number; body: unknown } {
    const refuse = (status: number, message: string) => ({ status, body: { error: { code: status === 409 ? "VIGIL_CONFLICT" : "VIGIL_BAD_REQUEST", message }, latestSize: this.latest?.head.size ?? 0 } });
    const b = body as { head?: unknown; fromSize?: unknown; proof?: unknown };
    let head: TreeHead;
    try {
      head = treeHeadOf(b?.head);
    } catch (err) {
      return refuse(400, `head: ${(err as Error).message}`);
    }
    if (head.keyId !== this.siteKeyId || !verifyTreeHead(head, this.siteKey)) return refuse(400, `head: not signed by the site key ${this.siteKeyId}`);
    const last = this.latest?.head;
    if (last) {
      if (head.size < last.size) return refuse(409, `head: size ${head.size} is older than the last witnessed head (${last.size}): the log was truncated`);
      if (head.size === last.size) {
        if (head.rootHash !== last.rootHash) return refuse(409, `head: a different tree of the same size ${head.size} (a fork): the log was rewritten`);
        return { status: 200, body: { witnessKeyId: this.key.keyId, cosignature: this.latest!.cosignature, size: head.size } };
      }
      const proof = parsePath(b.proof);
      if (b.fromSize !== last.size || !proof) return refuse(409, `proof: a consistency proof from the last witnessed size ${last.size} is required`);
      if (!verifyConsistency(last.size, head.size, Buffer.from(last.rootHash, "hex"), Buffer.from(head.rootHash, "hex"), proof)) {
        return refuse(409, `proof: the tree of size ${head.size} does not extend the witnessed tree of size ${last.size}: the log was truncated or rewritten`);
      }
    }
    const accepted: Accepted = { head, cosignature: this.key.sign(cosignBytes(head)), witnessKeyId: this.key.keyId };
    appendLineDurably(this.log, JSON.stringify(accepted));
    this.latest = accepted;
    return { status: 200, body: { witnessKeyId: accepted.witnessKeyId, cosignature: accepted.cosignature, size: head.size } };
  }

  current(): { status: number; body: unknown } {
    return this.latest ? { status: 200, body: this.latest } : { status: 404, body: { error: { code: "VIGIL_NOT_FOUND", message: "No head witnessed yet" } } };
  }
}

async function readBody(req: IncomingMessage): Promise<unknown> {
  let size = 0;
  const chunks: Buffer[] = [];
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > MAX_BODY) throw new Error(`the body is larger than ${MAX_BODY} bytes`);
    chunks.push(chunk);
  }
  return JSON.parse(Buffer.concat(chunks).toString("utf8"));
}

/** Serves a WitnessServer over HTTP; resolves with the listening server. */
export async function serveWitness(options: { dir: string; siteKeyPath: string; host: string; port: number }): Promise<{ server: Server; witness: WitnessServer; port: number }> {
  const witness = new WitnessServer(options.dir, createPublicKey(readFileSync(options.siteKeyPath)));
  // One submission at a time: the accept decision and the append must not interleave.
  let queue: Promise<unknown> = Promise.resolve();
  const server = createServer((req, res) => {
    const send = (r: { status: number; body: unknown }) => {
      res.writeHead(r.status, { "content-type": "application/json" });
      res.end(JSON.stringify(r.body));
    };
    const path = new URL(req.url ?? "/", "http://x").pathname;
    if (req.method === "GET" && path === "/v1/witness/head") return send(witness.current());
    if (req.method === "POST" && path === "/v1/witness/heads") {
      queue = queue.then(async () => {
        try {
          send(witness.submit(await readBody(req)));
        } catch (err) {
          send({ status: 400, body: { error: { code: "VIGIL_BAD_REQUEST", message: (err as Error).message } } });
        }
      });
      return;
    }
    send({ status: 404, body: { error: { code: "VIGIL_NOT_FOUND", message: `No such route: ${req.method} ${path}` } } });
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(options.port, options.host, () => resolve());
  });
  const addr = server.address();
  return { server, witness, port: typeof addr === "object" && addr ? addr.port : options.port };
}

/** `vigil witness serve`: runs until SIGTERM/SIGINT. */
export async function runWitnessServer(options: { dir: string; siteKeyPath: string; listen: string }): Promise<void> {
  const m = /^(.+):(\d{1,5})$/.exec(options.listen);
  if (!m) throw Object.assign(new Error(`Invalid --listen ${JSON.stringify(options.listen)}: use ADDR:PORT`), { code: "VIGIL_BAD_REQUEST" });
  const { server, witness, port } = await serveWitness({ dir: options.dir, siteKeyPath: options.siteKeyPath, host: m[1]!, port: Number(m[2]) });
  process.stdout.write(`vigil witness ${witness.witnessKeyId} listening on ${m[1]}:${port}, heads in ${join(options.dir, "heads.jsonl")}\n`);
  const stop = () => server.close(() => process.exit(0));
  process.once("SIGTERM", stop);
  process.once("SIGINT", stop);
}
