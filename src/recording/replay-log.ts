/**
 * A bounded, streaming reader of QEMU 7.2's record/replay log (`-icount rr=record,rrfile=F`), for summaries of
 * imported (hostile) recordings: it never allocates from a length the log claims (array payloads are skipped, only
 * counted), holds at most one event's fixed part between chunks, and reports an unknown kind or a cut-off event
 * with its byte offset.
 *
 * Format (QEMU 7.2, replay/replay.c, replay-internal.{c,h}, replay-events.c, replay-char.c, replay-net.c,
 * replay-input.c, replay-audio.c, replay-random.c): all integers big-endian. Header: u32 REPLAY_VERSION (0xe0200c)
 * + 8 bytes QEMU never writes (zero). Written only by replay_finish at exit; while recording the file grows from
 * offset 12. Then events, each one kind byte and a payload fixed by the kind; an "array" is u32 length + bytes.
 */
import { createReadStream } from "node:fs";
import { VigilError } from "../errors.ts";

/** REPLAY_VERSION of QEMU 7.1–7.2 (replay/replay.c), the first 4 bytes of a finished log. */
export const REPLAY_VERSION = 0xe0200c;
/** u32 version + u64 (unused, zero). */
export const HEADER_SIZE = 12;
/** The largest array payload accepted (char input, net packet, random bytes, read-all): QEMU's are ≤ 64 KiB. */
export const MAX_ARRAY_BYTES = 1 << 20;
/** The most audio-in samples one event may claim. */
export const MAX_AUDIO_SAMPLES = 1 << 20;

// Event kinds of QEMU 7.2 (enum ReplayEvents, replay-internal.h): 7 async kinds, 11 shutdown causes + 1,
// 2 clocks (HOST, VIRTUAL_RT), 9 checkpoints.
const EV_INSTRUCTION = 0;
const EV_INTERRUPT = 1;
const EV_EXCEPTION = 2;
const EV_ASYNC = 3; // + BH, BH_ONESHOT, INPUT, INPUT_SYNC, CHAR_READ, BLOCK, NET
const EV_ASYNC_LAST = 9;
const EV_SHUTDOWN = 10;
const EV_SHUTDOWN_LAST = 21; // EVENT_SHUTDOWN + SHUTDOWN_CAUSE__MAX (11)
const EV_CHAR_WRITE = 22;
const EV_CHAR_READ_ALL = 23;
const EV_CHAR_READ_ALL_ERROR = 24;
const EV_AUDIO_OUT = 25;
const EV_AUDIO_IN = 26;
const EV_RANDOM = 27;
const EV_CLOCK = 28;
const EV_CLOCK_LAST = 29;
const EV_CHECKPOINT = 30;
const EV_CHECKPOINT_LAST = 38;
const EV_END = 39;

const ASYNC_NAMES = ["async-bh", "async-bh-oneshot", "async-input", "async-input-sync", "async-char-read", "async-block", "async-net"] as const;

export type EventKindName =
  | "instruction" | "interrupt" | "exception" | (typeof ASYNC_NAMES)[number] | "shutdown" | "char-write"
  | "char-read-all" | "char-read-all-error" | "audio-out" | "audio-in" | "random" | "clock" | "checkpoint" | "end";

export interface LogSummary {
  /** The header's REPLAY_VERSION (0 when the header was not written yet: a log still being recorded). */
  version: number;
  /** Sum of all instruction events: the icount the log reaches. */
  totalInstructions: bigint;
  /** Number of events of each kind (only kinds seen). */
  events: Partial<Record<EventKindName, number>>;
  /** Serial input per chardev index (the order QEMU registered the recorded chardevs: `-serial` order). */
  charInput: Record<string, { events: number; bytes: number }>;
  network: { packets: number; bytes: number };
  blockEvents: number;
  clockReads: number;
  checkpoints: number;
  /** EVENT_END seen (QEMU exited and finished the log); false when the log stops at an event boundary without it. */
  endedCleanly: boolean;
  /** Bytes read, header included. */
  bytes: number;
}

export interface ParseOptions {
  /** Names the log in error messages. */
  label?: string;
  /** Accept a header of zeros (a log QEMU is still writing; its header comes at exit). */
  allowUnfinishedHeader?: boolean;
}

function bad(label: string, message: string): VigilError {
  return new VigilError("VIGIL_BAD_REQUEST", `Invalid replay log ${label}: ${message}`, { field: "log" });
}

/**
 * Push parser: `feed()` chunks in order, then `end()` for the summary. Every call either makes progress of at
 * least one byte per event or keeps the (short) incomplete tail for the next chunk, so it cannot loop.
 */
export class ReplayLogParser {
  private readonly label: string;
  private readonly allowUnfinished: boolean;
  private tail: Buffer = Buffer.alloc(0);
  /** Absolute offset of tail[0]. */
  private offset = 0;
  /** Bytes of an array payload still to skip (they may span chunks). */
  private skip = 0;
  private skipKind = "";
  private headerDone = false;
  private ended = false;
  private insnSmall = 0; // summed as a Number, folded into the BigInt before it could lose precision
  private readonly s: LogSummary = {
    version: 0, totalInstructions: 0n, events: {}, charInput: {}, network: { packets: 0, bytes: 0 },
    blockEvents: 0, clockReads: 0, checkpoints: 0, endedCleanly: false, bytes: 0,
  };

  constructor(options: ParseOptions = {}) {
    this.label = JSON.stringify(options.label ?? "log");
    this.allowUnfinished = options.allowUnfinishedHeader ?? false;
  }

  /** Bytes held between chunks (an incomplete event's fixed part): bounded whatever the log claims. */
  get bufferedBytes(): number {
    return this.tail.length;
  }

  /** Instructions in the events parsed so far (a live log's icount). */
  get instructions(): bigint {
    return this.s.totalInstructions + BigInt(this.insnSmall);
  }

  feed(chunk: Uint8Array): void {
    if (chunk.length === 0) return;
    this.s.bytes += chunk.length;
    let buf = Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
    if (this.skip > 0) {
      const n = Math.min(this.skip, buf.length);
      this.skip -= n;
      this.offset += n;
      buf = buf.subarray(n);
      if (buf.length === 0) return;
    }
    if (this.tail.length > 0) buf = Buffer.concat([this.tail, buf]);
    let p = 0;
    if (!this.headerDone) {
      if (buf.length < HEADER_SIZE) {
        this.tail = Buffer.from(buf);
        return;
      }
      const version = buf.readUInt32BE(0);
      if (version !== REPLAY_VERSION && !(version === 0 && this.allowUnfinished)) {
        throw bad(this.label, `version 0x${version.toString(16)} at offset 0 is not QEMU 7.2's 0x${REPLAY_VERSION.toString(16)}`);
      }
      this.s.version = version;
      this.headerDone = true;
      p = HEADER_SIZE;
    }
    while (p < buf.length) {
      if (this.ended) throw bad(this.label, `${buf.length - p} bytes after EVENT_END at offset ${this.offset + p}`);
      const used = this.event(buf, p);
      if (used === 0) break; // incomplete: keep the tail
      p += used;
      if (this.skip > 0) {
        const n = Math.min(this.skip, buf.length - p);
        this.skip -= n;
        p += n;
      }
    }
    this.offset += p;
    // The kept tail is shorter than the longest fixed part (< 64 bytes): copying it detaches it from `chunk`.
    this.tail = p < buf.length ? Buffer.from(buf.subarray(p)) : Buffer.alloc(0);
  }

  /** Finishes: a cut-off event is an error; a log without EVENT_END reports `endedCleanly: false`. */
  end(): LogSummary {
    if (!this.headerDone) throw bad(this.label, `truncated at offset ${this.offset + this.tail.length}: the 12-byte header is incomplete`);
    if (this.skip > 0) throw bad(this.label, `truncated: ${this.skip} bytes of a ${this.skipKind} payload missing at the end (offset ${this.offset})`);
    if (this.tail.length > 0) {
      throw bad(this.label, `truncated at offset ${this.offset}: event kind ${this.tail[0]} is cut off after ${this.tail.length} bytes`);
    }
    this.s.totalInstructions += BigInt(this.insnSmall);
    this.insnSmall = 0;
    this.s.endedCleanly = this.ended;
    return { ...this.s, events: { ...this.s.events }, charInput: structuredClone(this.s.charInput), network: { ...this.s.network } };
  }

  private count(name: EventKindName): void {
    this.s.events[name] = (this.s.events[name] ?? 0) + 1;
  }

  /** Starts skipping an array payload at `p` (its u32 length): returns the bytes of the length field. */
  private array(buf: Buffer, p: number, kind: string): number {
    const len = buf.readUInt32BE(p);
    if (len > MAX_ARRAY_BYTES) throw bad(this.label, `${kind} payload of ${len} bytes at offset ${this.offset + p} exceeds the ${MAX_ARRAY_BYTES}-byte limit`);
    this.skip = len;
    this.skipKind = kind;
    return len;
  }

  /** Parses one event's fixed part at `p`; returns its size, or 0 when the buffer ends inside it. */
  private event(buf: Buffer, p: number): number {
    const have = buf.length - p;
    const kind = buf[p]!;
    const at = this.offset + p;
    if (kind === EV_INSTRUCTION) {
      if (have < 5) return 0;
      this.insnSmall += buf.readUInt32BE(p + 1);
      if (this.insnSmall > 2 ** 52) {
        this.s.totalInstructions += BigInt(this.insnSmall);
        this.insnSmall = 0;
      }
      this.count("instruction");
      return 5;
    }
    if (kind === EV_INTERRUPT || kind === EV_EXCEPTION) {
      this.count(kind === EV_INTERRUPT ? "interrupt" : "exception");
      return 1;
    }
    if (kind >= EV_ASYNC && kind <= EV_ASYNC_LAST) return this.asyncEvent(buf, p, kind - EV_ASYNC, at);
    if (kind >= EV_SHUTDOWN && kind <= EV_SHUTDOWN_LAST) {
      this.count("shutdown");
      return 1;
    }
    switch (kind) {
      case EV_CHAR_WRITE: // i32 result, i32 offset
        if (have < 9) return 0;
        this.count("char-write");
        return 9;
      case EV_CHAR_READ_ALL: // array
        if (have < 5) return 0;
        this.count("char-read-all");
        this.array(buf, p + 1, "char-read-all");
        return 5;
      case EV_CHAR_READ_ALL_ERROR: // i32
        if (have < 5) return 0;
        this.count("char-read-all-error");
        return 5;
      case EV_AUDIO_OUT: // u64 played
        if (have < 9) return 0;
        this.count("audio-out");
        return 9;
      case EV_AUDIO_IN: {
        // u64 recorded, u64 wpos, then `recorded` samples of two u64 (left, right)
        if (have < 17) return 0;
        const recorded = buf.readBigUInt64BE(p + 1);
        if (recorded > BigInt(MAX_AUDIO_SAMPLES)) throw bad(this.label, `audio-in event at offset ${at} claims ${recorded} samples, more than ${MAX_AUDIO_SAMPLES}`);
        this.count("audio-in");
        this.skip = Number(recorded) * 16;
        this.skipKind = "audio-in";
        return 17;
      }
      case EV_RANDOM: // i32 ret, array
        if (have < 9) return 0;
        this.count("random");
        this.array(buf, p + 5, "random");
        return 9;
      case EV_END:
        this.count("end");
        this.ended = true;
        return 1;
      default:
        break;
    }
    if (kind >= EV_CLOCK && kind <= EV_CLOCK_LAST) {
      if (have < 9) return 0; // i64 clock value
      this.count("clock");
      this.s.clockReads++;
      return 9;
    }
    if (kind >= EV_CHECKPOINT && kind <= EV_CHECKPOINT_LAST) {
      this.count("checkpoint");
      this.s.checkpoints++;
      return 1;
    }
    throw bad(this.label, `unknown event kind ${kind} at offset ${at} (QEMU 7.2 kinds are 0-${EV_END})`);
  }

  private asyncEvent(buf: Buffer, p: number, async: number, at: number): number {
    const have = buf.length - p;
    const name = ASYNC_NAMES[async]!;
    switch (async) {
      case 0: // BH: u64 id
      case 1: // BH_ONESHOT
      case 5: // BLOCK: u64 id
        if (have < 9) return 0;
        this.count(name);
        if (async === 5) this.s.blockEvents++;
        return 9;
      case 2: { // INPUT: u32 type, then per type
        if (have < 5) return 0;
        const type = buf.readUInt32BE(p + 1);
        let size: number;
        if (type === 0) {
          // KEY: u32 key kind; NUMBER: u64 + u8 down; QCODE: u32 + u8 down
          if (have < 9) return 0;
          const keyKind = buf.readUInt32BE(p + 5);
          if (keyKind === 0) size = 9 + 9;
          else if (keyKind === 1) size = 9 + 5;
          else throw bad(this.label, `input key event at offset ${at} has unknown key kind ${keyKind} (0 number, 1 qcode)`);
        } else if (type === 1) size = 5 + 5; // BTN: u32 button, u8 down
        else if (type === 2 || type === 3) size = 5 + 12; // REL/ABS: u32 axis, i64 value
        else throw bad(this.label, `input event at offset ${at} has unknown type ${type} (QEMU 7.2: 0 key, 1 btn, 2 rel, 3 abs)`);
        if (have < size) return 0;
        this.count(name);
        return size;
      }
      case 3: // INPUT_SYNC
        this.count(name);
        return 1;
      case 4: { // CHAR_READ: u8 chardev index, array
        if (have < 6) return 0;
        const id = String(buf[p + 1]);
        const len = this.array(buf, p + 2, "char-read");
        const c = (this.s.charInput[id] ??= { events: 0, bytes: 0 });
        c.events++;
        c.bytes += len;
        this.count(name);
        return 6;
      }
      default: { // 6 NET: u8 filter index, u32 flags, array
        if (have < 10) return 0;
        const len = this.array(buf, p + 6, "net");
        this.s.network.packets++;
        this.s.network.bytes += len;
        this.count(name);
        return 10;
      }
    }
  }
}

/** Summarizes a log from a file path or a stream of chunks, without holding it in memory. */
export async function summarizeReplayLog(source: string | AsyncIterable<Uint8Array>, options: ParseOptions = {}): Promise<LogSummary> {
  const parser = new ReplayLogParser(typeof source === "string" && options.label === undefined ? { ...options, label: source } : options);
  const stream = typeof source === "string" ? createReadStream(source, { highWaterMark: 1 << 16 }) : source;
  try {
    for await (const chunk of stream) parser.feed(chunk as Uint8Array);
  } catch (err) {
    if (typeof source === "string" && "destroy" in stream) (stream as { destroy(): void }).destroy();
    if (err instanceof VigilError) throw err;
    throw new VigilError("VIGIL_HOST", `Cannot read replay log ${JSON.stringify(options.label ?? String(source))}: ${(err as Error).message}`, { cause: err });
  }
  return parser.end();
}
