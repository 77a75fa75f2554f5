/**
 * Witnesses: places outside the database that keep the log's signed tree heads, so a later truncation or
 * rewrite disagrees with something the database owner cannot change. A file witness appends each head as one
 * line (O_APPEND, fsync) to a file on another mount; an HTTP witness (`vigil witness serve`) checks the head's
 * signature and a consistency proof from the last head it accepted, and co-signs. The publisher sends at most
 * one head per interval while records are written, plus one at shutdown, never one per record.
 */
import { closeSync, fsyncSync, openSync, readSync, fstatSync, writeSync, constants } from "node:fs";
import { messageOf } from "../errors.ts";
import { parseHeadFile, treeHeadOf, type TreeHead } from "./chain.ts";

export interface Witness {
  readonly name: string;
  /** The newest head this witness holds, if any. */
  latest(): Promise<TreeHead | undefined>;
  /** Hands over a head; `proof(from, to)` gives the consistency path between two sizes of this log. */
  publish(head: TreeHead, proof: (from: number, to: number) => Promise<string[]>): Promise<void>;
}

export interface WitnessStatus {
  name: string;
  publications: number;
  lastPublished: { size: number; time: string } | null;
  lastError: string | null;
}

const TAIL_BYTES = 64 * 1024;

/** The last complete line of a file, reading at most TAIL_BYTES from its end. */
export function lastLine(path: string): string | undefined {
  let fd: number;
  try {
    fd = openSync(path, "r");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw err;
  }
  try {
    const size = fstatSync(fd).size;
    const len = Math.min(size, TAIL_BYTES);
    const buf = Buffer.alloc(len);
    readSync(fd, buf, 0, len, size - len);
    const lines = buf.toString("utf8").split("\n").filter((l) => l.trim().length > 0);
    // With a partial first line (file longer than the window), only later lines are whole.
    return lines.length === 0 || (lines.length === 1 && size > len) ? undefined : lines[lines.length - 1];
  } finally {
    closeSync(fd);
  }
}

export function appendLineDurably(path: string, line: string): void {
  const fd = openSync(path, constants.O_WRONLY | constants.O_APPEND | constants.O_CREAT, 0o600);
  try {
    writeSync(fd, line.endsWith("\n") ? line : line + "\n");
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

export class FileWitness implements Witness {
  readonly name: string;
  constructor(private readonly path: string) {
    this.name = `file:${path}`;
  }

  async latest(): Promise<TreeHead | undefined> {
    const line = lastLine(this.path);
    if (line === undefined) return undefined;
    const parsed = parseHeadFile(line);
    if (parsed.kind !== "tree") throw new Error("its last line is not a tree head");
    return parsed.head;
  }

  async publish(head: TreeHead): Promise<void> {
    appendLineDurably(this.path, JSON.stringify({ type: "vigil-audit-tree-head", ...head }));
  }
}

export class HttpWitness implements Witness {
  readonly name: string;
  private knownSize: number | undefined;
  lastCosignature: { witnessKeyId: string; cosignature: string } | undefined;

  constructor(
    private readonly url: string,
    private readonly timeoutMs = 5000,
  ) {
    this.name = `http:${url}`;
  }

  private endpoint(path: string): string {
    return this.url.replace(/\/+$/, "") + path;
  }

  async latest(): Promise<TreeHead | undefined> {
    const res = await fetch(this.endpoint("/v1/witness/head"), { signal: AbortSignal.timeout(this.timeoutMs) });
    if (res.status === 404) {
      this.knownSize = 0;
      return undefined;
    }
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    const body = (await res.json()) as { head: unknown };
    const head = treeHeadOf(body.head);
    this.knownSize = head.size;
    return head;
  }

  async publish(head: TreeHead, proof: (from: number, to: number) => Promise<string[]>): Promise<void> {
    if (this.knownSize === undefined) await this.latest();
    for (let attempt = 0; attempt < 2; attempt++) {
      const from = Math.min(this.knownSize ?? 0, head.size);
      const res = await fetch(this.endpoint("/v1/witness/heads"), {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ head, fromSize: from, proof: await proof(from, head.size) }),
        signal: AbortSignal.timeout(this.timeoutMs),
      });
      const body = (await res.json().catch(() => ({}))) as { witnessKeyId?: string; cosignature?: string; latestSize?: number; error?: { message?: string } };
      if (res.ok) {
        this.knownSize = head.size;
        if (body.witnessKeyId && body.cosignature) this.lastCosignature = { witnessKeyId: body.witnessKeyId, cosignature: body.cosignature };
        return;
      }
      // The witness holds a different last head than we thought: retry once with a proof from its size.
      if (res.status === 409 && typeof body.latestSize === "number" && body.latestSize !== this.knownSize && body.latestSize <= head.size) {
        this.knownSize = body.latestSize;
        continue;
      }
      throw new Error(`the witness refused the head of size ${head.size}: ${body.error?.message ?? `HTTP ${res.status}`}`);
    }
    throw new Error(`the witness refused the head of size ${head.size}`);
  }
}

/** Batches heads to the witnesses: at most one publication per interval, the newest head each time. */
export class WitnessPublisher {
  private pending: TreeHead | undefined;
  private lastAt = 0;
  private timer: NodeJS.Timeout | undefined;
  private inflight: Promise<void> | undefined;
  private closed = false;
  private readonly state: Map<string, WitnessStatus>;

  constructor(
    private readonly witnesses: readonly Witness[],
    private readonly proof: (from: number, to: number) => Promise<string[]>,
    private readonly intervalMs: number,
    private readonly onError?: (witness: string, err: unknown) => void,
  ) {
    this.state = new Map(witnesses.map((w) => [w.name, { name: w.name, publications: 0, lastPublished: null, lastError: null }]));
  }

  offer(head: TreeHead): void {
    this.pending = head;
    if (this.closed) return;
    // Due already: publish now rather than wait for a timer, which a busy event loop may run late.
    if (!this.inflight && Date.now() - this.lastAt >= this.intervalMs) {
      if (this.timer) clearTimeout(this.timer);
      this.timer = undefined;
      void this.flush();
      return;
    }
    this.schedule();
  }

  private schedule(): void {
    if (this.timer || this.inflight) return;
    const wait = Math.max(0, this.lastAt + this.intervalMs - Date.now());
    this.timer = setTimeout(() => {
      this.timer = undefined;
      void this.flush();
    }, wait);
    this.timer.unref();
  }

  private async flush(): Promise<void> {
    const head = this.pending;
    if (!head) return;
    this.pending = undefined;
    this.lastAt = Date.now();
    this.inflight = Promise.all(
      this.witnesses.map(async (w) => {
        const s = this.state.get(w.name)!;
        try {
          await w.publish(head, this.proof);
          s.publications++;
          s.lastPublished = { size: head.size, time: head.time };
          s.lastError = null;
        } catch (err) {
          s.lastError = messageOf(err);
          this.onError?.(w.name, err);
        }
      }),
    ).then(() => undefined);
    await this.inflight;
    this.inflight = undefined;
    if (this.pending && !this.closed) this.schedule();
  }

  /** Publishes the newest head once more (if one is waiting) and stops. */
  async close(): Promise<void> {
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    await this.inflight;
    if (this.pending) await this.flush();
  }

  status(): WitnessStatus[] {
    return [...this.state.values()].map((s) => ({ ...s }));
  }
}
