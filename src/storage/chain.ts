/**
 * A disk image and its whole backing chain (qcow2 over qcow2 … over qcow2 or raw), opened read-only as one
 * `BlockReader`, for offline scans of dormant disks (docs/transience.md, "Reading a dormant disk"). Every file of
 * the chain is hostile input: its header chooses which host file is opened next. So backing names are resolved
 * exactly as QEMU does (relative to the directory of the image that names them), and the chain is refused, with
 * a `ChainError` whose `reason` names the rule, when it:
 * - loops (the same device and inode opened twice), or is deeper than `maxDepth` images;
 * - names a backing file that does not exist, or that lies outside the caller's `roots` (checked on the real
 *   path of the descriptor actually opened, so a symlink or a rename race cannot lead outside);
 * - names a protocol or pseudo-file (`json:`, `nbd:`, `file:` …: anything QEMU would not read as a plain path);
 * - names a backing format other than qcow2 or raw, or none at all (QEMU would probe the file's contents; a raw
 *   file whose guest wrote a qcow2 header would then name any host file as its own backing file). Probing like
 *   QEMU (qcow2 magic → qcow2, else raw) is available with `probeBackingFormat`, and reported per layer;
 * - has a layer whose virtual size is above `maxVirtualSize`;
 * - has a qcow2 layer whose active L1 table maps one L2 table twice, or whose L2 tables map one compressed
 *   stream twice (QEMU never writes either within one view; both are how a small file makes a reader inflate
 *   or walk without end), or claims more compressed clusters than zlib could ever inflate from its file;
 * - inflates more than its inflate budget during reads (`maxInflatedBytes`, by default `inflateRepeat` times
 *   every compressed cluster of the chain once): reads then fail with reason "inflate-budget".
 * All of these are decided at open (except the budget), before any guest data is read.
 */
import { closeSync, fstatSync, readlinkSync, realpathSync } from "node:fs";
import { dirname, isAbsolute, join, sep } from "node:path";
import { BugError, VigilError, messageOf, q } from "../errors.ts";
import { type BlockReader, RawImage, openReadOnly, readFully } from "./block-reader.ts";
import { DEFAULT_QCOW2_LIMITS, Qcow2Error, Qcow2Image, type InflateBudget, type Qcow2Limits, hex } from "./qcow2.ts";

/** Which rule refused a chain; stable names for callers and tests. */
export type ChainFailureReason =
  | "loop"
  | "depth"
  | "missing"
  | "outside-roots"
  | "backing-name"
  | "backing-format"
  | "virtual-size"
  | "shared-table"
  | "compressed-bomb"
  | "inflate-budget";

const REASON_CODE: Record<ChainFailureReason, "VIGIL_BAD_REQUEST" | "VIGIL_NOT_FOUND"> = {
  loop: "VIGIL_BAD_REQUEST",
  depth: "VIGIL_BAD_REQUEST",
  missing: "VIGIL_NOT_FOUND",
  "outside-roots": "VIGIL_BAD_REQUEST",
  "backing-name": "VIGIL_BAD_REQUEST",
  "backing-format": "VIGIL_BAD_REQUEST",
  "virtual-size": "VIGIL_BAD_REQUEST",
  "shared-table": "VIGIL_BAD_REQUEST",
  "compressed-bomb": "VIGIL_BAD_REQUEST",
  "inflate-budget": "VIGIL_BAD_REQUEST",
};

/** The error of this module; a malformed layer itself still throws the reader's `Qcow2Error`. */
export class ChainError extends VigilError {
  readonly reason: ChainFailureReason;

  constructor(reason: ChainFailureReason, message: string, options: { cause?: unknown } = {}) {
    super(REASON_CODE[reason], message, options);
    this.name = "ChainError";
    this.reason = reason;
  }
}

export interface ChainLimits {
  /** Most images in the chain, the top one included. */
  readonly maxDepth: number;
  /** Largest virtual size of any layer, in bytes. */
  readonly maxVirtualSize: bigint;
  /** How many times, on average, each compressed cluster of the chain may be inflated (cache misses). */
  readonly inflateRepeat: number;
  /** A fixed inflate budget in bytes instead of the one derived from `inflateRepeat`. */
  readonly maxInflatedBytes?: number;
  /** Limits passed to every qcow2 layer. */
  readonly qcow2: Partial<Qcow2Limits>;
}

export const DEFAULT_CHAIN_LIMITS: ChainLimits = {
  maxDepth: 16,
  maxVirtualSize: 16n << 40n, // 16 TiB
  inflateRepeat: 4,
  qcow2: {},
};

export interface ChainOptions {
  /** Format of the top image (never probed: vigil knows what it asks for). Default qcow2. */
  readonly format?: "qcow2" | "raw";
  /** Directories every backing file must lie in (after resolving symlinks); none given: anywhere. */
  readonly roots?: readonly string[];
  /** Probe backing files that name no format, as QEMU does, instead of refusing them. */
  readonly probeBackingFormat?: boolean;
  readonly limits?: Partial<ChainLimits>;
}

/** One file of the chain, top first. */
export interface ChainLayer {
  /** The path as resolved from the name that led here (QEMU's view); the top one as given. */
  readonly path: string;
  /** The real path of the opened descriptor. */
  readonly realPath: string;
  readonly format: "qcow2" | "raw";
  /** The format was probed from the contents (only with `probeBackingFormat`). */
  readonly formatProbed: boolean;
  readonly dev: bigint;
  readonly ino: bigint;
  readonly virtualSize: bigint;
  readonly fileSize: bigint;
  /** The backing file name exactly as this layer stores it. */
  readonly backingFile?: string;
  /** Compressed clusters in the active view (0 for raw). */
  readonly compressedClusters: number;
}

/** Largest output zlib can produce per input byte (deflate's 258-byte matches at ~2 bits each, rounded up). */
const ZLIB_MAX_RATIO = 1032n;
const QCOW2_MAGIC = 0x514649fb;

/** A budget every layer charges; reads fail once it is spent. */
class SharedInflateBudget implements InflateBudget {
  spent = 0;
  limit = Number.MAX_SAFE_INTEGER;

  charge(bytes: number, where: string): void {
    if (this.spent + bytes > this.limit) {
      throw new ChainError("inflate-budget", `Cannot inflate the ${where}: this chain's inflate budget of ${this.limit} bytes is spent (compressed-cluster bomb?)`);
    }
    this.spent += bytes;
  }
}

/** A backing reader filled in once the layer below is open (layers are opened top-down). */
class LateBacking implements BlockReader {
  target: BlockReader | undefined;
  get virtualSize(): bigint {
    return this.target?.virtualSize ?? 0n;
  }
  read(offset: bigint, length: number): Buffer {
    if (!this.target) return Buffer.alloc(length);
    return this.target.read(offset, length);
  }
}

/** QEMU's `path_has_protocol`: a colon before any slash makes the name a protocol (json:, nbd:, file: …). */
function hasProtocol(name: string): boolean {
  const i = name.search(/[:/]/);
  return i >= 0 && name[i] === ":";
}

function isInside(real: string, roots: readonly string[]): boolean {
  return roots.some((r) => real === r || real.startsWith(r.endsWith(sep) ? r : r + sep));
}

/**
 * One run of the chain's disk, as `qemu-img map --output=json` reports it: where the bytes come from (`depth`:
 * 0 is the top image) and whether that layer stores data (compressed clusters included) or zeros; "unallocated"
 * reads as zeros because no layer has it (depth: the last layer searched, which for a range past the end of a
 * shorter backing file is the layer above it).
 */
export interface ChainExtent {
  readonly offset: bigint;
  readonly length: bigint;
  readonly depth: number;
  readonly kind: "data" | "zero" | "unallocated";
}

/** An image and its backing chain, read as one disk. `close()` closes every file. */
export class ImageChain implements BlockReader {
  readonly layers: readonly ChainLayer[];
  readonly virtualSize: bigint;
  readonly #readers: Array<BlockReader & { close(): void }>;
  readonly #top: BlockReader;
  readonly #budget: SharedInflateBudget;

  /** @internal use `openChain` */
  constructor(layers: ChainLayer[], readers: Array<BlockReader & { close(): void }>, budget: SharedInflateBudget) {
    this.layers = layers;
    this.#readers = readers;
    const top = readers[0];
    if (!top) throw new BugError("an image chain needs at least one layer");
    this.#top = top;
    this.virtualSize = top.virtualSize;
    this.#budget = budget;
  }

  /** Bytes inflated so far and the budget, for reports. */
  get inflated(): { spent: number; limit: number } {
    return { spent: this.#budget.spent, limit: this.#budget.limit };
  }

  read(offset: bigint, length: number): Buffer {
    return this.#top.read(offset, length);
  }

  /**
   * Every run of the disk from start to end, adjacent runs of the same kind and depth merged. Lazy; the number of
   * runs is bounded by the allocated clusters of the chain (the open-time walk read them all once already).
   */
  *extents(): Generator<ChainExtent> {
    let pending: ChainExtent | undefined;
    // Bounded: each step covers at least one byte, and at most one step per (sub)cluster run of a layer.
    for (let pos = 0n; pos < this.virtualSize; ) {
      const next = this.#statusAt(0, pos, this.virtualSize - pos);
      pos += next.length;
      if (pending && pending.kind === next.kind && pending.depth === next.depth) {
        pending = { ...pending, length: pending.length + next.length };
      } else {
        if (pending) yield pending;
        pending = next;
      }
    }
    if (pending) yield pending;
  }

  #statusAt(depth: number, pos: bigint, max: bigint): ChainExtent {
    const reader = this.#readers[depth];
    if (!reader) throw new BugError(`no layer ${depth} in the chain`);
    if (reader instanceof RawImage) return { offset: pos, length: max, depth, kind: "data" };
    if (!(reader instanceof Qcow2Image)) throw new BugError("a chain layer is neither raw nor qcow2");
    const e = reader.map(pos);
    const length = minBig(e.length, max);
    if (e.kind === "zero") return { offset: pos, length, depth, kind: "zero" };
    if (e.kind !== "unallocated") return { offset: pos, length, depth, kind: "data" };
    const below = this.#readers[depth + 1];
    if (!below || pos >= below.virtualSize) return { offset: pos, length, depth, kind: "unallocated" };
    return this.#statusAt(depth + 1, pos, minBig(length, below.virtualSize - pos));
  }

  close(): void {
    for (const r of this.#readers) r.close();
    this.#readers.length = 0;
  }
}

/**
 * Opens `path` and its whole backing chain read-only. Throws a `ChainError` (see the module header) or the
 * `Qcow2Error` of a malformed layer; nothing stays open after a failure.
 */
export function openChain(path: string, options: ChainOptions = {}): ImageChain {
  const limits: ChainLimits = { ...DEFAULT_CHAIN_LIMITS, ...options.limits };
  const qcow2Limits: Qcow2Limits = { ...DEFAULT_QCOW2_LIMITS, ...limits.qcow2 };
  const roots = options.roots?.map((r) => {
    try {
      return realpathSync(r);
    } catch (err) {
      throw new VigilError("VIGIL_BAD_REQUEST", `Cannot use ${q(r)} as an allowed root for backing files: ${messageOf(err)}`, { field: "roots", cause: err });
    }
  });
  const budget = new SharedInflateBudget();
  const layers: ChainLayer[] = [];
  const readers: Array<BlockReader & { close(): void }> = [];
  const seen = new Map<string, string>();
  let potentialInflated = 0n;
  try {
    let next: { path: string; format: "qcow2" | "raw" | undefined; namedBy?: string } = { path, format: options.format ?? "qcow2" };
    let late: LateBacking | undefined;
    // Bounded by maxDepth: each pass opens one file or stops.
    for (;;) {
      const what = next.namedBy === undefined ? "image" : `backing file (named by ${q(next.namedBy)})`;
      if (layers.length >= limits.maxDepth) {
        throw new ChainError("depth", `Cannot open the ${what} ${q(next.path)}: the chain would be deeper than ${limits.maxDepth} images`);
      }
      // With roots, the name is checked before anything is opened (opening a device can have effects), and the
      // opened descriptor again below (the name may have changed in between).
      if (next.namedBy !== undefined && roots) {
        let pre: string | undefined;
        try {
          pre = realpathSync(next.path);
        } catch {
          pre = undefined; // missing: reported by the open below
        }
        if (pre !== undefined && !isInside(pre, roots)) {
          throw new ChainError("outside-roots", `Cannot open the ${what} ${q(next.path)}: it is ${q(pre)}, outside the allowed directories ${roots.map((r) => q(r)).join(", ")}`);
        }
      }
      let opened: { fd: number; size: bigint };
      try {
        opened = openReadOnly(next.path, next.namedBy === undefined ? "disk image" : `the ${what}`);
      } catch (err) {
        if (err instanceof VigilError && err.code === "VIGIL_NOT_FOUND") throw new ChainError("missing", err.message, { cause: err });
        throw err;
      }
      const { fd, size } = opened;
      let owned = true;
      try {
        const st = fstatSync(fd, { bigint: true });
        const id = `${st.dev}:${st.ino}`;
        const realPath = readlinkSync(`/proc/self/fd/${fd}`);
        const earlier = seen.get(id);
        if (earlier !== undefined) {
          throw new ChainError("loop", `Cannot open the ${what} ${q(next.path)}: it is ${q(earlier)} again (device ${st.dev}, inode ${st.ino}): the backing chain loops`);
        }
        seen.set(id, next.path);
        if (next.namedBy !== undefined && roots && !isInside(realPath, roots)) {
          throw new ChainError("outside-roots", `Cannot open the ${what} ${q(next.path)}: it is ${q(realPath)}, outside the allowed directories ${roots.map((r) => q(r)).join(", ")}`);
        }
        let format = next.format;
        let formatProbed = false;
        if (format === undefined) {
          const head = Buffer.alloc(8);
          const got = readFully(fd, head, 0n);
          const version = got === 8 ? head.readUInt32BE(4) : 0;
          format = got === 8 && head.readUInt32BE(0) === QCOW2_MAGIC && (version === 2 || version === 3) ? "qcow2" : "raw";
          formatProbed = true;
        }
        let reader: BlockReader & { close(): void };
        let backingFile: string | undefined;
        let backingFormat: string | undefined;
        let compressedClusters = 0;
        const below = new LateBacking();
        if (format === "raw") {
          reader = RawImage.fromFd(next.path, fd, size);
          owned = false;
          readers.push(reader);
        } else {
          owned = false; // fromFd owns the descriptor from here on, and closes it itself when parsing fails
          const img = Qcow2Image.fromFd(next.path, fd, size, { limits: qcow2Limits, backing: below, inflateBudget: budget });
          reader = img;
          readers.push(img);
          backingFile = img.header.backingFile;
          backingFormat = img.header.backingFormat;
          if (img.virtualSize <= limits.maxVirtualSize) compressedClusters = walk(img, fd);
          potentialInflated += BigInt(compressedClusters) * BigInt(img.header.clusterSize);
        }
        if (reader.virtualSize > limits.maxVirtualSize) {
          throw new ChainError("virtual-size", `Cannot open the ${what} ${q(next.path)}: its virtual size ${reader.virtualSize} is above the limit of ${limits.maxVirtualSize} bytes`);
        }
        layers.push({
          path: next.path,
          realPath,
          format,
          formatProbed,
          dev: st.dev,
          ino: st.ino,
          virtualSize: reader.virtualSize,
          fileSize: size,
          ...(backingFile === undefined ? {} : { backingFile }),
          compressedClusters,
        });
        if (late) late.target = reader;
        late = below;
        if (backingFile === undefined) break;
        next = { ...resolveBacking(next.path, backingFile, backingFormat, options.probeBackingFormat === true), namedBy: next.path };
      } finally {
        if (owned) closeSync(fd);
      }
    }
    budget.limit = limits.maxInflatedBytes ?? Number(minBig(BigInt(Number.MAX_SAFE_INTEGER), potentialInflated * BigInt(limits.inflateRepeat)));
    return new ImageChain(layers, readers, budget);
  } catch (err) {
    for (const r of readers) r.close();
    throw err;
  }
}

function minBig(a: bigint, b: bigint): bigint {
  return a < b ? a : b;
}

/** Where QEMU looks for a backing file named `name` by the image at `imagePath`, and in which format. */
export function resolveBacking(imagePath: string, name: string, format: string | undefined, probe: boolean): { path: string; format: "qcow2" | "raw" | undefined } {
  if (hasProtocol(name)) {
    throw new ChainError("backing-name", `Cannot open the backing file of ${q(imagePath)}: ${q(name)} names a protocol or pseudo-file, not a plain file`);
  }
  const path = isAbsolute(name) ? name : join(dirname(imagePath), name);
  if (format === "qcow2" || format === "raw") return { path, format };
  if (format !== undefined) {
    throw new ChainError("backing-format", `Cannot open the backing file ${q(name)} of ${q(imagePath)}: its format ${q(format)} is not supported (qcow2 or raw)`);
  }
  if (!probe) {
    throw new ChainError(
      "backing-format",
      `Cannot open the backing file ${q(name)} of ${q(imagePath)}: the image records no backing format, and probing one from the file's contents lets a raw disk pose as a qcow2 image (create overlays with -F, or allow probing)`,
    );
  }
  return { path, format: undefined };
}

/**
 * Walks the active view of a qcow2 layer once, at open: refuses an L2 table mapped twice by the L1 table, a
 * compressed stream mapped twice, and more compressed clusters than the file could inflate to; returns the
 * number of compressed clusters. Reads the L1 table itself and skips unallocated L1 entries, so the walk costs
 * the allocated L2 tables (at most the file's size in clusters), never the virtual size.
 */
function walk(img: Qcow2Image, fd: number): number {
  const h = img.header;
  if (h.externalDataFile !== undefined || h.encryption !== "none") return 0; // refused by every read anyway
  const cs = BigInt(h.clusterSize);
  const perL2 = cs * (cs / (h.extendedL2 ? 16n : 8n));
  const needed = Number((img.virtualSize + perL2 - 1n) / perL2);
  const l1 = Buffer.alloc(needed * 8);
  // The reader checked that the active L1 table lies in the file and holds at least `needed` entries.
  if (readFully(fd, l1, h.l1TableOffset) !== l1.length) throw new Qcow2Error("malformed", `Invalid qcow2 image ${q(img.path)}: the active L1 table could not be read`);
  const l2Seen = new Map<bigint, number>();
  const streams = new Set<bigint>();
  for (let i = 0; i < needed; i++) {
    const l2 = l1.readBigUInt64BE(i * 8) & 0x00ff_ffff_ffff_fe00n;
    if (l2 === 0n) continue;
    const other = l2Seen.get(l2);
    if (other !== undefined) {
      throw new ChainError("shared-table", `Cannot read qcow2 image ${q(img.path)}: active L1 entries ${other} and ${i} map the same L2 table at offset ${hex(l2)}`);
    }
    l2Seen.set(l2, i);
    const start = BigInt(i) * perL2;
    const end = minBig(img.virtualSize, start + perL2);
    // Bounded: every extent is non-empty and stays within this L2 table's range.
    for (let pos = start; pos < end; ) {
      const e = img.map(pos);
      if (e.kind === "compressed") {
        if (streams.has(e.hostOffset)) {
          throw new ChainError("compressed-bomb", `Cannot read qcow2 image ${q(img.path)}: the compressed stream at offset ${hex(e.hostOffset)} is mapped twice (again at guest offset ${hex(e.offset)})`);
        }
        streams.add(e.hostOffset);
      }
      pos = e.offset + e.length;
    }
  }
  const potential = BigInt(streams.size) * cs;
  if (potential > img.fileSize * ZLIB_MAX_RATIO) {
    throw new ChainError(
      "compressed-bomb",
      `Cannot read qcow2 image ${q(img.path)}: it maps ${streams.size} compressed clusters (${potential} bytes), more than zlib can inflate from a file of ${img.fileSize} bytes`,
    );
  }
  return streams.size;
}
