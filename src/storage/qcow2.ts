/**
 * A read-only, bounded qcow2 reader. Disk images are hostile input (they arrive in imported bundles, and guests
 * wrote every data cluster and, through QEMU, much of the metadata), so this reader checks every offset and
 * length against the file size before using it, bounds every loop by a header field it has already bounded,
 * allocates at most a limit per call, and answers a malformed image with a `Qcow2Error` (a `VigilError`,
 * code `VIGIL_BAD_REQUEST`) whose message names the structure and the byte offset at fault. It never writes.
 *
 * Supported (checked against qemu-img/qemu-io 7.2 in qcow2.test.ts):
 * - version 2 and 3 headers, any header_length (a multiple of 8, 104..cluster size) and cluster_bits 9..21;
 * - header extensions: backing file format, feature name table (used to name unknown features in errors),
 *   external data file name, full-disk-encryption pointer; unknown extensions are listed and skipped; a known
 *   extension that appears twice is refused (two readers could otherwise see two different answers);
 * - the backing file name (reported; reads fall through to a `BlockReader` the caller passes as `backing`);
 * - standard L1/L2 tables, the v3 "reads as zero" flag (preallocated or not), zlib-compressed clusters
 *   (inflated with node:zlib), extended L2 entries (32 subclusters per cluster, incompatible bit 4);
 * - internal snapshots: the snapshot table (id, name, dates, VM clock, icount, VM state size, disk size, raw
 *   extra data), reading any snapshot's view of the disk, and reading or hashing its saved VM state, which
 *   QEMU stores after the disk in the snapshot's L1 table at `qcow2_vm_state_offset()`: the disk size rounded
 *   up to the range one L2 table covers.
 * - dirty and corrupt images are opened (read-only access does not depend on refcounts, which are not read).
 *
 * Refused, with a clear error:
 * - unknown incompatible feature bits (named from the image's feature table when it has one), compression
 *   types other than zlib and zstd, cluster_bits outside 9..21, extended L2 with clusters under 16 KiB;
 * - reading data of encrypted images (AES or LUKS; the header is still reported) and of images whose clusters
 *   live in an external data file (`header.externalDataFile` is then set, to "" if unnamed;
 *   `assertSelfContained` refuses such images and unexpected backing files in one call);
 * - reading zstd-compressed clusters: Node 20 has no zstd, so `map()` reports them and `read()` throws;
 * - anything outside the spec that could make two readers disagree: reserved bits in L1/L2 entries, unaligned
 *   table or cluster offsets, a zero flag in a v2 image, COPIED on a compressed cluster, subclusters both
 *   allocated and zero, an active L1 table too small for the virtual size, NUL bytes in file names.
 *
 * Bounds (see `Qcow2Limits`): snapshot count and table bytes, L1 entries per table, bytes per read, bytes of
 * cached metadata and inflated clusters, extra data per snapshot (1 KiB, as QEMU), backing name (1023 bytes).
 * The VM state read from a snapshot may not claim more bytes than the file holds: QEMU writes it densely, so a
 * larger claim can only be a lie meant to make a hash run for ever over unallocated (zero) clusters.
 */
import { createHash } from "node:crypto";
import { closeSync } from "node:fs";
import { constants as zlibConstants, inflateRawSync } from "node:zlib";
import { BugError, VigilError, messageOf, q } from "../errors.ts";
import { type BlockReader, openReadOnly, readFully } from "./block-reader.ts";

/** How a qcow2 operation failed; the message says what and where. */
export type Qcow2FailureReason =
  /** The image breaks the format: a field out of range, an offset outside the file, reserved bits set. */
  | "malformed"
  /** A well-formed image using something this reader does not do (zstd, encryption, external data, ...). */
  | "unsupported"
  /** A request outside the disk or VM state, or larger than the read limit. */
  | "out-of-range"
  /** The named snapshot does not exist (or the name is ambiguous). */
  | "not-found"
  /** The host could not read the file. */
  | "io";

const REASON_CODE = {
  malformed: "VIGIL_BAD_REQUEST",
  unsupported: "VIGIL_BAD_REQUEST",
  "out-of-range": "VIGIL_BAD_REQUEST",
  "not-found": "VIGIL_NOT_FOUND",
  io: "VIGIL_HOST",
} as const;

/** The one error this module throws for anything an image or a caller did. */
export class Qcow2Error extends VigilError {
  readonly reason: Qcow2FailureReason;

  constructor(reason: Qcow2FailureReason, message: string, options: { cause?: unknown } = {}) {
    super(REASON_CODE[reason], message, options);
    this.name = "Qcow2Error";
    this.reason = reason;
  }
}

/** Per-image bounds; every one caps memory or time that a hostile header could otherwise choose. */
export interface Qcow2Limits {
  /** Most internal snapshots an image may list (QEMU allows 65 536). */
  readonly maxSnapshots: number;
  /** Most bytes the snapshot table may span (QEMU allows 64 MiB). */
  readonly maxSnapshotTableBytes: number;
  /** Most entries in any L1 table (QEMU's 32 MiB table: 4 Mi entries, 2 PiB of disk at 64 KiB clusters). */
  readonly maxL1Entries: number;
  /** Most bytes one `read()` or `readVmState()` returns. */
  readonly maxReadBytes: number;
  /** Bytes of L1 chunks, L2 tables and inflated clusters kept between calls. */
  readonly cacheBytes: number;
}

export const DEFAULT_QCOW2_LIMITS: Qcow2Limits = {
  maxSnapshots: 10_000,
  maxSnapshotTableBytes: 16 * 1024 * 1024,
  maxL1Entries: 4 * 1024 * 1024,
  maxReadBytes: 64 * 1024 * 1024,
  cacheBytes: 8 * 1024 * 1024,
};

export interface Qcow2OpenOptions {
  readonly limits?: Partial<Qcow2Limits>;
  /**
   * What unallocated clusters read through to. Not owned: closing the image does not close it. Without it,
   * unallocated clusters read as zeros (and the caller should have checked `header.backingFile`).
   */
  readonly backing?: BlockReader;
  /**
   * Charged one cluster before every inflation (cache misses only); may throw to stop a read. Shared by every
   * layer of a backing chain (src/storage/chain.ts), it caps the inflation work of a whole scan.
   */
  readonly inflateBudget?: InflateBudget;
}

/** A budget of inflated bytes; `charge` throws (a `VigilError`) once it is spent. */
export interface InflateBudget {
  charge(bytes: number, where: string): void;
}

export interface Qcow2FeatureName {
  readonly type: "incompatible" | "compatible" | "autoclear" | number;
  readonly bit: number;
  readonly name: string;
}

export interface Qcow2HeaderExtension {
  readonly type: number;
  /** File offset of the extension's 8-byte type/length header. */
  readonly offset: number;
  readonly length: number;
}

export interface Qcow2Header {
  readonly version: 2 | 3;
  readonly clusterBits: number;
  readonly clusterSize: number;
  readonly virtualSize: bigint;
  readonly encryption: "none" | "aes" | "luks";
  /** The backing file name exactly as stored; relative names are relative to the image's directory. */
  readonly backingFile?: string;
  readonly backingFormat?: string;
  /**
   * Set whenever guest clusters live in another file (incompatible bit 2): the name from the header extension,
   * or "" when the image does not name one (QEMU then takes it from an option). Never undefined for such an
   * image, so `externalDataFile !== undefined` is a complete check.
   */
  readonly externalDataFile?: string;
  /** The external data file is a consistent raw image by itself (autoclear bit 1). */
  readonly externalDataRaw: boolean;
  readonly incompatibleFeatures: bigint;
  readonly compatibleFeatures: bigint;
  readonly autoclearFeatures: bigint;
  readonly dirty: boolean;
  readonly corrupt: boolean;
  readonly extendedL2: boolean;
  readonly lazyRefcounts: boolean;
  readonly refcountOrder: number;
  readonly headerLength: number;
  readonly l1Size: number;
  readonly l1TableOffset: bigint;
  readonly refcountTableOffset: bigint;
  readonly refcountTableClusters: number;
  readonly nbSnapshots: number;
  readonly snapshotsOffset: bigint;
  readonly compressionType: "zlib" | "zstd";
  /** The LUKS header location, from the full-disk-encryption extension. */
  readonly cryptoHeader?: { readonly offset: bigint; readonly length: bigint };
  readonly featureNames: readonly Qcow2FeatureName[];
  readonly extensions: readonly Qcow2HeaderExtension[];
}

export interface Qcow2Snapshot {
  readonly id: string;
  readonly name: string;
  readonly l1TableOffset: bigint;
  readonly l1Size: number;
  /** Bytes of saved VM state (0 for a disk-only snapshot). */
  readonly vmStateSize: bigint;
  /** Virtual disk size when the snapshot was taken. */
  readonly diskSize: bigint;
  /** Guest offset in the snapshot's view where the VM state starts (QEMU's `qcow2_vm_state_offset()`). */
  readonly vmStateOffset: bigint;
  readonly dateSec: number;
  readonly dateNsec: number;
  readonly vmClockNsec: bigint;
  /** Record/replay instruction count; absent when not stored or stored as -1 (icount off). */
  readonly icount?: bigint;
  /** The entry's extra data, raw (at most 1 KiB): the fields above plus anything newer. */
  readonly extraData: Buffer;
  /** File offset of the snapshot table entry. */
  readonly entryOffset: bigint;
}

/** Which view of the disk to read: the active one (default) or an internal snapshot's, by name or id. */
export type Qcow2View = { readonly snapshot: string } | { readonly snapshotId: string };

/** One run of the virtual disk with a single status; offsets and lengths are bytes. */
export type Qcow2Extent =
  | { readonly kind: "data"; readonly offset: bigint; readonly length: bigint; readonly hostOffset: bigint }
  | { readonly kind: "zero"; readonly offset: bigint; readonly length: bigint; readonly hostOffset?: bigint }
  /** Not in this image: reads fall through to the backing file (zeros without one). */
  | { readonly kind: "unallocated"; readonly offset: bigint; readonly length: bigint }
  | {
      readonly kind: "compressed";
      readonly offset: bigint;
      readonly length: bigint;
      /** File offset of the compressed stream (not aligned). */
      readonly hostOffset: bigint;
      /** Bytes of the file the stream may occupy (whole 512-byte sectors, clipped at the end of the file). */
      readonly compressedLength: number;
      readonly compression: "zlib" | "zstd";
    };

const MAGIC = 0x514649fb;
const V2_HEADER_LENGTH = 72;
const V3_MIN_HEADER_LENGTH = 104;
const MAX_BACKING_NAME = 1023;
/** QEMU's `sizeof(bs->backing_format)` minus the NUL. */
const MAX_BACKING_FORMAT = 15;
const MAX_SNAPSHOT_EXTRA_DATA = 1024;
const SNAPSHOT_HEADER_BYTES = 40;
const FEATURE_ENTRY_BYTES = 48;

const L1E_OFFSET_MASK = 0x00ff_ffff_ffff_fe00n;
const L1E_RESERVED_MASK = 0x7f00_0000_0000_01ffn;
const L2E_OFFSET_MASK = 0x00ff_ffff_ffff_fe00n;
const L2E_STD_RESERVED_MASK = 0x3f00_0000_0000_01fen;
const OFLAG_COPIED = 1n << 63n;
const OFLAG_COMPRESSED = 1n << 62n;
const OFLAG_ZERO = 1n;
const U64_MAX = (1n << 64n) - 1n;

const INCOMPAT_DIRTY = 1n << 0n;
const INCOMPAT_CORRUPT = 1n << 1n;
const INCOMPAT_DATA_FILE = 1n << 2n;
const INCOMPAT_COMPRESSION = 1n << 3n;
const INCOMPAT_EXTL2 = 1n << 4n;
const INCOMPAT_KNOWN = INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_DATA_FILE | INCOMPAT_COMPRESSION | INCOMPAT_EXTL2;
const COMPAT_LAZY_REFCOUNTS = 1n << 0n;
const AUTOCLEAR_DATA_FILE_RAW = 1n << 1n;

const EXT_BACKING_FORMAT = 0xe2792aca;
const EXT_FEATURE_TABLE = 0x6803f857;
const EXT_CRYPTO = 0x0537be77;
const EXT_DATA_FILE = 0x44415441;
const EXT_BITMAPS = 0x23852875;
const KNOWN_EXTENSIONS = new Set([EXT_BACKING_FORMAT, EXT_FEATURE_TABLE, EXT_CRYPTO, EXT_DATA_FILE, EXT_BITMAPS]);
const SUBCLUSTERS = 32;
/** Chunk size for hashing VM state: bounded memory whatever the state's size. */
const HASH_CHUNK = 4 * 1024 * 1024;

/** Formats a file or guest offset the way every message of this module shows it. */
export function hex(value: bigint | number): string {
  return "0x" + value.toString(16);
}

const utf8Strict = new TextDecoder("utf-8", { fatal: true });

/** Random-access bytes of the image file; `read` returns how many bytes it filled before EOF. */
interface ByteSource {
  readonly size: bigint;
  read(position: bigint, buf: Buffer): number;
  close(): void;
}

function fdSource(fd: number, size: bigint): ByteSource {
  return { size, read: (position, buf) => readFully(fd, buf, position), close: () => closeSync(fd) };
}

function bufferSource(bytes: Buffer): ByteSource {
  return {
    size: BigInt(bytes.length),
    read(position, buf) {
      if (position >= BigInt(bytes.length)) return 0;
      return bytes.copy(buf, 0, Number(position), Math.min(bytes.length, Number(position) + buf.length));
    },
    close: () => undefined,
  };
}

/** A small LRU of immutable buffers with a byte budget; Map iteration order is insertion order. */
class ByteCache {
  readonly #entries = new Map<string, Buffer>();
  #bytes = 0;
  constructor(private readonly budget: number) {}

  get(key: string, load: () => Buffer): Buffer {
    const hit = this.#entries.get(key);
    if (hit) {
      this.#entries.delete(key);
      this.#entries.set(key, hit);
      return hit;
    }
    const value = load();
    if (value.length > this.budget) return value;
    this.#entries.set(key, value);
    this.#bytes += value.length;
    for (const [k, v] of this.#entries) {
      if (this.#bytes <= this.budget) break;
      this.#entries.delete(k);
      this.#bytes -= v.length;
    }
    return value;
  }

  clear(): void {
    this.#entries.clear();
    this.#bytes = 0;
  }
}

/** A table of guest clusters: the active L1 or a snapshot's, with the size of the disk it describes. */
interface ResolvedView {
  readonly l1Offset: bigint;
  readonly l1Size: number;
  /** Exclusive end of the guest range callers may touch through this view. */
  readonly end: bigint;
  readonly label: string;
  readonly useBacking: boolean;
}

function minBig(a: bigint, b: bigint): bigint {
  return a < b ? a : b;
}

/** A qcow2 image opened read-only. */
export class Qcow2Image implements BlockReader {
  readonly path: string;
  readonly header: Qcow2Header;
  /** Size of the active view in bytes. */
  readonly virtualSize: bigint;
  /** Size of the image file when it was opened; every offset is checked against it. */
  readonly fileSize: bigint;

  #src: ByteSource | undefined;
  readonly #limits: Qcow2Limits;
  readonly #backing: BlockReader | undefined;
  readonly #inflateBudget: InflateBudget | undefined;
  readonly #cache: ByteCache;
  readonly #snapshots: Qcow2Snapshot[];
  readonly #clusterSize: number;
  readonly #l2EntryBytes: 8 | 16;
  readonly #l2Entries: number;
  /** Guest bytes one L2 table (one L1 entry) maps. */
  readonly #bytesPerL2: bigint;
  readonly #subclusterSize: number;

  private constructor(path: string, src: ByteSource, options: Qcow2OpenOptions) {
    this.path = path;
    this.#src = src;
    this.fileSize = src.size;
    this.#limits = { ...DEFAULT_QCOW2_LIMITS, ...options.limits };
    this.#backing = options.backing;
    this.#inflateBudget = options.inflateBudget;
    this.#cache = new ByteCache(this.#limits.cacheBytes);
    this.header = this.#parseHeader();
    this.virtualSize = this.header.virtualSize;
    this.#clusterSize = this.header.clusterSize;
    this.#l2EntryBytes = this.header.extendedL2 ? 16 : 8;
    this.#l2Entries = this.#clusterSize / this.#l2EntryBytes;
    this.#bytesPerL2 = BigInt(this.#clusterSize) * BigInt(this.#l2Entries);
    this.#subclusterSize = this.header.extendedL2 ? this.#clusterSize / SUBCLUSTERS : this.#clusterSize;
    this.#checkActiveL1();
    this.#snapshots = this.#parseSnapshots();
  }

  /** Opens the image at `path` read-only. `close()` releases the descriptor. */
  static open(path: string, options: Qcow2OpenOptions = {}): Qcow2Image {
    const { fd, size } = openReadOnly(path, "qcow2 image");
    return Qcow2Image.fromFd(path, fd, size, options);
  }

  /**
   * Takes over an already opened descriptor of `size` bytes (closed by `close()`, or here when parsing fails), so
   * that a caller can check the file it opened (device, inode, real path) before trusting it.
   */
  static fromFd(path: string, fd: number, size: bigint, options: Qcow2OpenOptions = {}): Qcow2Image {
    const src = fdSource(fd, size);
    try {
      return new Qcow2Image(path, src, options);
    } catch (err) {
      src.close();
      throw err;
    }
  }

  /** Parses an image held in memory (`label` names it in messages), e.g. a member of a bundle or a test case. */
  static fromBytes(label: string, bytes: Buffer, options: Qcow2OpenOptions = {}): Qcow2Image {
    return new Qcow2Image(label, bufferSource(bytes), options);
  }

  /** The internal snapshots, in table order. */
  snapshots(): readonly Qcow2Snapshot[] {
    return this.#snapshots;
  }

  /**
   * What backs the guest byte at `offset` in the active view or a snapshot's, and how far that status
   * continues (at most to the end of the L2 table that describes it).
   */
  map(offset: bigint, view?: Qcow2View): Qcow2Extent {
    this.#assertMappable("map");
    const v = this.#resolve(view);
    if (offset < 0n || offset >= v.end) {
      throw new Qcow2Error("out-of-range", `Cannot map offset ${offset} of ${this.#viewName(view)}: the disk has ${v.end} bytes`);
    }
    return this.#run(v, offset);
  }

  /**
   * Every extent of a view from start to end, adjacent extents of the same status merged (as `qemu-img map`
   * does). Lazy: a hostile image can describe many extents, so the caller decides how many to take.
   */
  *extents(view?: Qcow2View): Generator<Qcow2Extent> {
    this.#assertMappable("map");
    const v = this.#resolve(view);
    let pending: Qcow2Extent | undefined;
    let pos = 0n;
    while (pos < v.end) {
      const next = this.#run(v, pos);
      pos = next.offset + next.length;
      if (pending && mergeable(pending, next)) {
        pending = { ...pending, length: pending.length + next.length };
      } else {
        if (pending) yield pending;
        pending = next;
      }
    }
    if (pending) yield pending;
  }

  /**
   * Reads `length` bytes of the guest disk at `offset` in the active view or a snapshot's. Unallocated clusters
   * read from `backing` (zeros past its end, or without one).
   */
  read(offset: bigint, length: number, view?: Qcow2View): Buffer {
    this.#assertReadable();
    const v = this.#resolve(view);
    this.#checkRequest(offset, length, v.end, this.#viewName(view));
    return this.#readView(v, offset, length);
  }

  /** Reads bytes `[offset, offset + length)` of a snapshot's saved VM state. */
  readVmState(snapshot: string | { readonly id: string }, offset: bigint, length: number): Buffer {
    this.#assertReadable();
    const sn = this.#snapshot(typeof snapshot === "string" ? { snapshot } : { snapshotId: snapshot.id });
    const v = this.#vmStateView(sn);
    this.#checkRequest(offset, length, sn.vmStateSize, `the VM state of snapshot ${q(sn.name)}`);
    return this.#readView(v, sn.vmStateOffset + offset, length);
  }

  /** SHA-256 (hex) of a snapshot's whole saved VM state, read in bounded chunks. */
  sha256VmState(snapshot: string | { readonly id: string }): string {
    this.#assertReadable();
    const sn = this.#snapshot(typeof snapshot === "string" ? { snapshot } : { snapshotId: snapshot.id });
    const v = this.#vmStateView(sn);
    const hash = createHash("sha256");
    const chunk = Math.min(HASH_CHUNK, this.#limits.maxReadBytes);
    // Bounded: #vmStateView refused a state larger than the file, and each pass consumes `chunk` bytes.
    for (let done = 0n; done < sn.vmStateSize; ) {
      const n = Number(minBig(BigInt(chunk), sn.vmStateSize - done));
      hash.update(this.#readView(v, sn.vmStateOffset + done, n));
      done += BigInt(n);
    }
    return hash.digest("hex");
  }

  /** Releases the file descriptor and caches; further use is a bug. */
  close(): void {
    this.#src?.close();
    this.#src = undefined;
    this.#cache.clear();
  }

  // ---- errors -----------------------------------------------------------------------------------------------

  #malformed(what: string, cause?: unknown): Qcow2Error {
    return new Qcow2Error("malformed", `Invalid qcow2 image ${q(this.path)}: ${what}`, cause === undefined ? {} : { cause });
  }

  #unsupported(what: string): Qcow2Error {
    return new Qcow2Error("unsupported", `Cannot read qcow2 image ${q(this.path)}: ${what}`);
  }

  #viewName(view: Qcow2View | undefined): string {
    if (!view) return `qcow2 image ${q(this.path)}`;
    return "snapshot" in view ? `snapshot ${q(view.snapshot)} of ${q(this.path)}` : `snapshot id ${q(view.snapshotId)} of ${q(this.path)}`;
  }

  // ---- file access ------------------------------------------------------------------------------------------

  /** Reads exactly `length` bytes at `position`, refusing anything not wholly inside the file. */
  #readExact(position: bigint, length: number, what: string): Buffer {
    return this.#readInto(position, Buffer.alloc(length), what);
  }

  /** Fills `buf` from `position`, refusing anything not wholly inside the file. */
  #readInto(position: bigint, buf: Buffer, what: string): Buffer {
    const src = this.#src;
    const length = buf.length;
    if (!src) throw new BugError(`qcow2 image ${q(this.path)} used after close()`);
    if (position < 0n || position + BigInt(length) > this.fileSize) {
      throw this.#malformed(`${what} at offset ${hex(position)} (${length} bytes) lies outside the file (${this.fileSize} bytes)`);
    }
    let got: number;
    try {
      got = src.read(position, buf);
    } catch (err) {
      throw new Qcow2Error("io", `Cannot read qcow2 image ${q(this.path)} at offset ${hex(position)}: ${messageOf(err)}`, { cause: err });
    }
    if (got !== length) throw this.#malformed(`${what} at offset ${hex(position)} could not be read: the file shrank while open`);
    return buf;
  }

  // ---- header -----------------------------------------------------------------------------------------------

  #parseHeader(): Qcow2Header {
    if (this.fileSize < BigInt(V2_HEADER_LENGTH)) {
      throw this.#malformed(`the file has ${this.fileSize} bytes, fewer than a qcow2 header (${V2_HEADER_LENGTH})`);
    }
    const fixed = this.#readExact(0n, Number(minBig(this.fileSize, 112n)), "header");
    const magic = fixed.readUInt32BE(0);
    if (magic !== MAGIC) throw this.#malformed(`no qcow2 magic at offset 0x0 (found ${hex(magic)})`);
    const version = fixed.readUInt32BE(4);
    if (version !== 2 && version !== 3) throw this.#unsupported(`version ${version} at offset 0x4 (only 2 and 3 are supported)`);
    const backingFileOffset = fixed.readBigUInt64BE(8);
    const backingFileSize = fixed.readUInt32BE(16);
    const clusterBits = fixed.readUInt32BE(20);
    const virtualSize = fixed.readBigUInt64BE(24);
    const cryptMethod = fixed.readUInt32BE(32);
    const l1Size = fixed.readUInt32BE(36);
    const l1TableOffset = fixed.readBigUInt64BE(40);
    const refcountTableOffset = fixed.readBigUInt64BE(48);
    const refcountTableClusters = fixed.readUInt32BE(56);
    const nbSnapshots = fixed.readUInt32BE(60);
    const snapshotsOffset = fixed.readBigUInt64BE(64);

    if (clusterBits < 9 || clusterBits > 21) throw this.#malformed(`cluster_bits ${clusterBits} at offset 0x14 is outside 9..21`);
    const clusterSize = 2 ** clusterBits;
    const cs = BigInt(clusterSize);

    let incompatibleFeatures = 0n;
    let compatibleFeatures = 0n;
    let autoclearFeatures = 0n;
    let refcountOrder = 4;
    let headerLength = V2_HEADER_LENGTH;
    let compressionByte = 0;
    if (version === 3) {
      if (fixed.length < V3_MIN_HEADER_LENGTH) throw this.#malformed(`the file has ${this.fileSize} bytes, fewer than a version 3 header (${V3_MIN_HEADER_LENGTH})`);
      incompatibleFeatures = fixed.readBigUInt64BE(72);
      compatibleFeatures = fixed.readBigUInt64BE(80);
      autoclearFeatures = fixed.readBigUInt64BE(88);
      refcountOrder = fixed.readUInt32BE(96);
      headerLength = fixed.readUInt32BE(100);
      if (headerLength < V3_MIN_HEADER_LENGTH || headerLength % 8 !== 0 || headerLength > clusterSize) {
        throw this.#malformed(`header_length ${headerLength} at offset 0x64 is not a multiple of 8 between ${V3_MIN_HEADER_LENGTH} and the cluster size (${clusterSize})`);
      }
      if (BigInt(headerLength) > this.fileSize) throw this.#malformed(`header_length ${headerLength} at offset 0x64 runs past the end of the file (${this.fileSize} bytes)`);
      if (headerLength > 104) compressionByte = fixed[104] ?? 0;
    }
    if (refcountOrder > 6) throw this.#malformed(`refcount_order ${refcountOrder} at offset 0x60 is above 6`);
    if (cryptMethod > 2) throw this.#malformed(`crypt_method ${cryptMethod} at offset 0x20 is unknown`);

    // Extensions run from the end of the header to the backing file name, or to the end of the first cluster.
    if (backingFileOffset !== 0n) {
      if (backingFileOffset < BigInt(headerLength) || backingFileOffset >= cs) {
        throw this.#malformed(`backing file name offset ${hex(backingFileOffset)} at offset 0x8 is not inside the first cluster after the header`);
      }
      if (backingFileSize === 0 || backingFileSize > MAX_BACKING_NAME || BigInt(backingFileSize) > cs - backingFileOffset) {
        throw this.#malformed(`backing file name length ${backingFileSize} at offset 0x10 is not between 1 and ${MAX_BACKING_NAME} bytes within the first cluster`);
      }
    }
    const extEnd = Number(minBig(backingFileOffset !== 0n ? backingFileOffset : cs, this.fileSize));
    const area = this.#readExact(0n, Math.max(extEnd, headerLength), "header extension area");
    const ext = this.#parseExtensions(area, headerLength, extEnd);

    let backingFile: string | undefined;
    if (backingFileOffset !== 0n) {
      const raw = this.#readExact(backingFileOffset, backingFileSize, "backing file name");
      backingFile = this.#fileName(raw, "backing file name", backingFileOffset);
    }

    const unknown = incompatibleFeatures & ~INCOMPAT_KNOWN;
    if (unknown !== 0n) {
      const names: string[] = [];
      for (let bit = 0; bit < 64; bit++) {
        if (((unknown >> BigInt(bit)) & 1n) === 0n) continue;
        const named = ext.featureNames.find((f) => f.type === "incompatible" && f.bit === bit);
        names.push(named ? `bit ${bit} (${q(named.name)})` : `bit ${bit}`);
      }
      throw this.#unsupported(`it uses incompatible features this reader does not know: ${names.join(", ")}`);
    }
    const extendedL2 = (incompatibleFeatures & INCOMPAT_EXTL2) !== 0n;
    if (extendedL2 && clusterBits < 14) throw this.#malformed(`extended L2 entries need clusters of at least 16 KiB, but cluster_bits is ${clusterBits}`);
    const compressionBit = (incompatibleFeatures & INCOMPAT_COMPRESSION) !== 0n;
    if (compressionBit !== (compressionByte !== 0)) {
      throw this.#malformed(`compression_type ${compressionByte} at offset 0x68 does not agree with incompatible feature bit 3 (${compressionBit ? "set" : "clear"})`);
    }
    if (compressionByte > 1) throw this.#unsupported(`compression_type ${compressionByte} at offset 0x68 is unknown (0 is zlib, 1 is zstd)`);
    const hasDataFile = (incompatibleFeatures & INCOMPAT_DATA_FILE) !== 0n;
    if (ext.dataFile !== undefined && !hasDataFile) {
      throw this.#malformed("it names an external data file but incompatible feature bit 2 (external data file) is clear");
    }

    if (refcountTableOffset % cs !== 0n) throw this.#malformed(`refcount table offset ${hex(refcountTableOffset)} at offset 0x30 is not cluster-aligned`);
    if (nbSnapshots > this.#limits.maxSnapshots) {
      throw this.#malformed(`it lists ${nbSnapshots} snapshots (offset 0x3c), more than the limit of ${this.#limits.maxSnapshots}`);
    }
    if (nbSnapshots > 0 && snapshotsOffset % cs !== 0n) throw this.#malformed(`snapshot table offset ${hex(snapshotsOffset)} at offset 0x40 is not cluster-aligned`);

    return {
      version,
      clusterBits,
      clusterSize,
      virtualSize,
      encryption: cryptMethod === 0 ? "none" : cryptMethod === 1 ? "aes" : "luks",
      ...(backingFile === undefined ? {} : { backingFile }),
      ...(ext.backingFormat === undefined ? {} : { backingFormat: ext.backingFormat }),
      ...(hasDataFile ? { externalDataFile: ext.dataFile ?? "" } : {}),
      externalDataRaw: hasDataFile && (autoclearFeatures & AUTOCLEAR_DATA_FILE_RAW) !== 0n,
      incompatibleFeatures,
      compatibleFeatures,
      autoclearFeatures,
      dirty: (incompatibleFeatures & INCOMPAT_DIRTY) !== 0n,
      corrupt: (incompatibleFeatures & INCOMPAT_CORRUPT) !== 0n,
      extendedL2,
      lazyRefcounts: (compatibleFeatures & COMPAT_LAZY_REFCOUNTS) !== 0n,
      refcountOrder,
      headerLength,
      l1Size,
      l1TableOffset,
      refcountTableOffset,
      refcountTableClusters,
      nbSnapshots,
      snapshotsOffset,
      compressionType: compressionByte === 1 ? "zstd" : "zlib",
      ...(ext.cryptoHeader === undefined ? {} : { cryptoHeader: ext.cryptoHeader }),
      featureNames: ext.featureNames,
      extensions: ext.extensions,
    };
  }

  #parseExtensions(area: Buffer, start: number, end: number) {
    const extensions: Qcow2HeaderExtension[] = [];
    const featureNames: Qcow2FeatureName[] = [];
    const seen = new Set<number>();
    let backingFormat: string | undefined;
    let dataFile: string | undefined;
    let cryptoHeader: { offset: bigint; length: bigint } | undefined;
    // Bounded: each pass advances at least 8 bytes through at most one cluster (2 MiB).
    for (let pos = start; pos + 8 <= end; ) {
      const type = area.readUInt32BE(pos);
      const length = area.readUInt32BE(pos + 4);
      if (type === 0) break;
      const dataStart = pos + 8;
      if (length > end - dataStart) {
        throw this.#malformed(`header extension ${hex(type)} at offset ${hex(pos)} (${length} bytes) runs past the end of the header area (offset ${hex(end)})`);
      }
      if (KNOWN_EXTENSIONS.has(type)) {
        if (seen.has(type)) throw this.#malformed(`header extension ${hex(type)} at offset ${hex(pos)} appears twice`);
        seen.add(type);
      }
      const data = area.subarray(dataStart, dataStart + length);
      if (type === EXT_BACKING_FORMAT) {
        if (length > MAX_BACKING_FORMAT) throw this.#malformed(`backing format extension at offset ${hex(pos)} is ${length} bytes (at most ${MAX_BACKING_FORMAT})`);
        backingFormat = this.#fileName(data, "backing format", BigInt(dataStart));
      } else if (type === EXT_DATA_FILE) {
        dataFile = this.#fileName(data, "external data file name", BigInt(dataStart));
      } else if (type === EXT_CRYPTO) {
        if (length !== 16) throw this.#malformed(`encryption header extension at offset ${hex(pos)} is ${length} bytes (expected 16)`);
        cryptoHeader = { offset: data.readBigUInt64BE(0), length: data.readBigUInt64BE(8) };
      } else if (type === EXT_FEATURE_TABLE) {
        for (let i = 0; i + FEATURE_ENTRY_BYTES <= length; i += FEATURE_ENTRY_BYTES) {
          const t = data[i] ?? 0;
          const bit = data[i + 1] ?? 0;
          const nameBytes = data.subarray(i + 2, i + FEATURE_ENTRY_BYTES);
          const nul = nameBytes.indexOf(0);
          featureNames.push({
            type: t === 0 ? "incompatible" : t === 1 ? "compatible" : t === 2 ? "autoclear" : t,
            bit,
            name: nameBytes.toString("utf8", 0, nul < 0 ? nameBytes.length : nul),
          });
        }
      }
      extensions.push({ type, offset: pos, length });
      pos = dataStart + Math.ceil(length / 8) * 8;
    }
    return { extensions, featureNames, backingFormat, dataFile, cryptoHeader };
  }

  /** Decodes a file or format name: strict UTF-8 without NUL, so that vigil and QEMU read the same name. */
  #fileName(raw: Buffer, what: string, offset: bigint): string {
    if (raw.includes(0)) throw this.#malformed(`${what} at offset ${hex(offset)} contains a NUL byte`);
    try {
      return utf8Strict.decode(raw);
    } catch (err) {
      throw this.#malformed(`${what} at offset ${hex(offset)} is not valid UTF-8`, err);
    }
  }

  /** L1 entries needed to map `size` guest bytes (QEMU's `size_to_l1`). */
  #l1EntriesFor(size: bigint): bigint {
    return (size + this.#bytesPerL2 - 1n) / this.#bytesPerL2;
  }

  #checkL1Table(offset: bigint, entries: number, what: string): void {
    if (entries > this.#limits.maxL1Entries) throw this.#malformed(`${what} has ${entries} entries, more than the limit of ${this.#limits.maxL1Entries}`);
    if (entries === 0) return;
    if (offset % BigInt(this.#clusterSize) !== 0n) throw this.#malformed(`${what} at offset ${hex(offset)} is not cluster-aligned`);
    if (offset + BigInt(entries) * 8n > this.fileSize) {
      throw this.#malformed(`${what} at offset ${hex(offset)} (${entries} entries) lies outside the file (${this.fileSize} bytes)`);
    }
  }

  #checkActiveL1(): void {
    const h = this.header;
    const needed = this.#l1EntriesFor(h.virtualSize);
    if (needed > BigInt(this.#limits.maxL1Entries)) {
      throw this.#malformed(`virtual size ${h.virtualSize} at offset 0x18 needs ${needed} L1 entries, more than the limit of ${this.#limits.maxL1Entries}`);
    }
    if (BigInt(h.l1Size) < needed) {
      throw this.#malformed(`active L1 table has ${h.l1Size} entries (offset 0x24) but virtual size ${h.virtualSize} needs ${needed}`);
    }
    this.#checkL1Table(h.l1TableOffset, h.l1Size, "active L1 table");
  }

  // ---- snapshots --------------------------------------------------------------------------------------------

  #parseSnapshots(): Qcow2Snapshot[] {
    const h = this.header;
    const out: Qcow2Snapshot[] = [];
    const tableEnd = minBig(this.fileSize, h.snapshotsOffset + BigInt(this.#limits.maxSnapshotTableBytes));
    let pos = h.snapshotsOffset;
    // Bounded by nb_snapshots (checked against the limit), and each entry is bounded in size.
    for (let i = 0; i < h.nbSnapshots; i++) {
      pos = (pos + 7n) & ~7n;
      const what = `snapshot table entry ${i}`;
      if (pos + BigInt(SNAPSHOT_HEADER_BYTES) > tableEnd) throw this.#tableOverrun(what, pos, tableEnd);
      const head = this.#readExact(pos, SNAPSHOT_HEADER_BYTES, what);
      const l1TableOffset = head.readBigUInt64BE(0);
      const l1Size = head.readUInt32BE(8);
      const idSize = head.readUInt16BE(12);
      const nameSize = head.readUInt16BE(14);
      const dateSec = head.readUInt32BE(16);
      const dateNsec = head.readUInt32BE(20);
      const vmClockNsec = head.readBigUInt64BE(24);
      const vmStateSize32 = head.readUInt32BE(32);
      const extraSize = head.readUInt32BE(36);
      if (extraSize > MAX_SNAPSHOT_EXTRA_DATA) {
        throw this.#malformed(`${what} at offset ${hex(pos)} has ${extraSize} bytes of extra data (at most ${MAX_SNAPSHOT_EXTRA_DATA})`);
      }
      const restLen = extraSize + idSize + nameSize;
      const restPos = pos + BigInt(SNAPSHOT_HEADER_BYTES);
      if (restPos + BigInt(restLen) > tableEnd) throw this.#tableOverrun(what, pos, tableEnd);
      const rest = this.#readExact(restPos, restLen, what);
      const extraData = Buffer.from(rest.subarray(0, extraSize));
      const vmStateSize = extraSize >= 8 ? extraData.readBigUInt64BE(0) : BigInt(vmStateSize32);
      const diskSize = extraSize >= 16 ? extraData.readBigUInt64BE(8) : h.virtualSize;
      const icountRaw = extraSize >= 24 ? extraData.readBigUInt64BE(16) : undefined;
      const id = rest.toString("utf8", extraSize, extraSize + idSize);
      const name = rest.toString("utf8", extraSize + idSize, restLen);
      this.#checkL1Table(l1TableOffset, l1Size, `L1 table of snapshot ${q(name)} (${what} at offset ${hex(pos)})`);
      if (this.#l1EntriesFor(diskSize) > BigInt(this.#limits.maxL1Entries)) {
        throw this.#malformed(`${what} at offset ${hex(pos)} has disk size ${diskSize}, which needs more than ${this.#limits.maxL1Entries} L1 entries`);
      }
      out.push({
        id,
        name,
        l1TableOffset,
        l1Size,
        vmStateSize,
        diskSize,
        vmStateOffset: this.#l1EntriesFor(diskSize) * this.#bytesPerL2,
        dateSec,
        dateNsec,
        vmClockNsec,
        ...(icountRaw === undefined || icountRaw === U64_MAX ? {} : { icount: icountRaw }),
        extraData,
        entryOffset: pos,
      });
      pos = restPos + BigInt(restLen);
    }
    return out;
  }

  #tableOverrun(what: string, pos: bigint, tableEnd: bigint): Qcow2Error {
    const byLimit = tableEnd < this.fileSize;
    return this.#malformed(
      `${what} at offset ${hex(pos)} runs past ${byLimit ? `the snapshot table limit of ${this.#limits.maxSnapshotTableBytes} bytes` : `the end of the file (${this.fileSize} bytes)`}`,
    );
  }

  #snapshot(view: Qcow2View): Qcow2Snapshot {
    const byName = "snapshot" in view;
    const key = byName ? view.snapshot : view.snapshotId;
    const found = this.#snapshots.filter((s) => (byName ? s.name === key : s.id === key));
    const what = byName ? `snapshot ${q(key)}` : `snapshot id ${q(key)}`;
    if (found.length === 0) throw new Qcow2Error("not-found", `Qcow2 image ${q(this.path)} has no ${what}`);
    if (found.length > 1) throw new Qcow2Error("not-found", `Qcow2 image ${q(this.path)} has ${found.length} snapshots matching ${what}; select one by id`);
    return found[0] as Qcow2Snapshot;
  }

  #resolve(view: Qcow2View | undefined): ResolvedView {
    if (!view) {
      return { l1Offset: this.header.l1TableOffset, l1Size: this.header.l1Size, end: this.virtualSize, label: "active L1 table", useBacking: true };
    }
    const sn = this.#snapshot(view);
    return { l1Offset: sn.l1TableOffset, l1Size: sn.l1Size, end: sn.diskSize, label: `L1 table of snapshot ${q(sn.name)}`, useBacking: true };
  }

  #vmStateView(sn: Qcow2Snapshot): ResolvedView {
    // QEMU writes VM state densely into this file, never compressed: a larger claim cannot be honest.
    if (sn.vmStateSize > this.fileSize) {
      throw this.#malformed(`snapshot ${q(sn.name)} (entry at offset ${hex(sn.entryOffset)}) claims ${sn.vmStateSize} bytes of VM state but the file has ${this.fileSize} bytes`);
    }
    // The VM state lies above the disk, where a backing file has nothing to say: unallocated reads as zeros.
    return { l1Offset: sn.l1TableOffset, l1Size: sn.l1Size, end: sn.vmStateOffset + sn.vmStateSize, label: `L1 table of snapshot ${q(sn.name)}`, useBacking: false };
  }

  // ---- mapping ----------------------------------------------------------------------------------------------

  #assertMappable(action: string): void {
    if (!this.#src) throw new BugError(`qcow2 image ${q(this.path)} used after close()`);
    const file = this.header.externalDataFile;
    if (file !== undefined) {
      throw this.#unsupported(`cannot ${action} it: its clusters live in an external data file${file === "" ? "" : ` (${q(file)})`}`);
    }
  }

  #assertReadable(): void {
    this.#assertMappable("read");
    if (this.header.encryption !== "none") throw this.#unsupported(`it is encrypted (${this.header.encryption})`);
  }

  #checkRequest(offset: bigint, length: number, end: bigint, what: string): void {
    if (!Number.isSafeInteger(length) || length < 0 || length > this.#limits.maxReadBytes) {
      throw new Qcow2Error("out-of-range", `Cannot read ${length} bytes of ${what}: at most ${this.#limits.maxReadBytes} bytes per read`);
    }
    if (offset < 0n || offset + BigInt(length) > end) {
      throw new Qcow2Error("out-of-range", `Cannot read ${length} bytes at offset ${offset} of ${what}: it has ${end} bytes`);
    }
  }

  #l1Entry(v: ResolvedView, index: number): bigint {
    const perChunk = this.#clusterSize / 8;
    const chunk = Math.floor(index / perChunk);
    const chunkOffset = v.l1Offset + BigInt(chunk * this.#clusterSize);
    const bytes = Math.min(this.#clusterSize, (v.l1Size - chunk * perChunk) * 8);
    const buf = this.#cache.get(`L1@${chunkOffset}+${bytes}`, () => this.#readExact(chunkOffset, bytes, v.label));
    return buf.readBigUInt64BE((index % perChunk) * 8);
  }

  /** `what` is built only when a message needs it: this runs for every granule of every read. */
  #l2Table(offset: bigint, what: () => string): Buffer {
    if (offset % BigInt(this.#clusterSize) !== 0n) throw this.#malformed(`${what()} at offset ${hex(offset)} is not cluster-aligned`);
    return this.#cache.get(`L2@${offset}`, () => this.#readExact(offset, this.#clusterSize, what()));
  }

  /**
   * The status of the guest byte at `pos` and how far it continues, within one (sub)cluster or, for an
   * unallocated L2 table, within the range that table would map. Never beyond `v.end`.
   */
  #granule(v: ResolvedView, pos: bigint): Qcow2Extent {
    const l1Index = pos / this.#bytesPerL2;
    const l1Start = l1Index * this.#bytesPerL2;
    const tableEnd = minBig(v.end, l1Start + this.#bytesPerL2);
    // A snapshot's L1 table may be shorter than its disk: QEMU pads it with zeros (unallocated).
    if (l1Index >= BigInt(v.l1Size)) return { kind: "unallocated", offset: pos, length: v.end - pos };
    const l1e = this.#l1Entry(v, Number(l1Index));
    const l1What = () => `${v.label} entry ${l1Index} (at offset ${hex(v.l1Offset + l1Index * 8n)})`;
    if ((l1e & L1E_RESERVED_MASK) !== 0n) throw this.#malformed(`${l1What()} has reserved bits set (${hex(l1e)})`);
    const l2Offset = l1e & L1E_OFFSET_MASK;
    if (l2Offset === 0n) return { kind: "unallocated", offset: pos, length: tableEnd - pos };
    const table = this.#l2Table(l2Offset, () => `L2 table of ${l1What()}`);

    const cs = BigInt(this.#clusterSize);
    const l2Index = Number((pos - l1Start) / cs);
    const entryPos = l2Index * this.#l2EntryBytes;
    const entry = table.readBigUInt64BE(entryPos);
    const bitmap = this.header.extendedL2 ? table.readBigUInt64BE(entryPos + 8) : 0n;
    const entryWhat = () => `L2 entry ${l2Index} (at offset ${hex(l2Offset + BigInt(entryPos))})`;
    const clusterStart = l1Start + BigInt(l2Index) * cs;
    const intra = pos - clusterStart;
    const clusterEnd = minBig(v.end, clusterStart + cs);

    if ((entry & OFLAG_COMPRESSED) !== 0n) {
      if ((entry & OFLAG_COPIED) !== 0n) throw this.#malformed(`${entryWhat()} is compressed and also marked COPIED (${hex(entry)})`);
      if (bitmap !== 0n) throw this.#malformed(`${entryWhat()} is compressed but has a subcluster bitmap (${hex(bitmap)})`);
      const shift = BigInt(62 - (this.header.clusterBits - 8));
      const hostOffset = entry & ((1n << shift) - 1n);
      const sectors = Number((entry >> shift) & ((1n << BigInt(this.header.clusterBits - 8)) - 1n)) + 1;
      if (hostOffset >= 1n << 56n || hostOffset >= this.fileSize) {
        throw this.#malformed(`compressed cluster of ${entryWhat()} at offset ${hex(hostOffset)} lies outside the file (${this.fileSize} bytes)`);
      }
      // The descriptor counts whole sectors; the last may run past the end of the file, which QEMU reads as zeros.
      const full = sectors * 512 - Number(hostOffset & 511n);
      const compressedLength = Number(minBig(BigInt(full), this.fileSize - hostOffset));
      return { kind: "compressed", offset: pos, length: clusterEnd - pos, hostOffset, compressedLength, compression: this.header.compressionType };
    }

    if ((entry & L2E_STD_RESERVED_MASK) !== 0n) throw this.#malformed(`${entryWhat()} has reserved bits set (${hex(entry)})`);
    const host = entry & L2E_OFFSET_MASK;
    if (host % cs !== 0n) throw this.#malformed(`${entryWhat()} points to offset ${hex(host)}, which is not cluster-aligned`);
    const zeroFlag = (entry & OFLAG_ZERO) !== 0n;
    if (zeroFlag && (this.header.version === 2 || this.header.extendedL2)) {
      throw this.#malformed(`${entryWhat()} has the zero flag, which a ${this.header.extendedL2 ? "extended L2 entry" : "version 2 image"} may not use`);
    }

    if (!this.header.extendedL2) {
      if (zeroFlag) return { kind: "zero", offset: pos, length: clusterEnd - pos, ...(host === 0n ? {} : { hostOffset: host + intra }) };
      if (host === 0n) return { kind: "unallocated", offset: pos, length: clusterEnd - pos };
      this.#checkData(host + intra, clusterEnd - pos, entryWhat);
      return { kind: "data", offset: pos, length: clusterEnd - pos, hostOffset: host + intra };
    }

    const alloc = bitmap & 0xffff_ffffn;
    const zero = bitmap >> 32n;
    const sc = Number(intra / BigInt(this.#subclusterSize));
    const scEnd = minBig(v.end, clusterStart + BigInt((sc + 1) * this.#subclusterSize));
    const bit = 1n << BigInt(sc);
    if (host === 0n && alloc !== 0n) throw this.#malformed(`${entryWhat()} marks subclusters allocated (${hex(bitmap)}) but has no host cluster`);
    if ((alloc & zero) !== 0n) throw this.#malformed(`${entryWhat()} marks subclusters both allocated and zero (${hex(bitmap)})`);
    if ((zero & bit) !== 0n) return { kind: "zero", offset: pos, length: scEnd - pos, ...(host === 0n ? {} : { hostOffset: host + intra }) };
    if ((alloc & bit) === 0n) return { kind: "unallocated", offset: pos, length: scEnd - pos };
    this.#checkData(host + intra, scEnd - pos, entryWhat);
    return { kind: "data", offset: pos, length: scEnd - pos, hostOffset: host + intra };
  }

  /**
   * Data must lie in the file. Checked per granule, not per cluster: with subclusters QEMU writes only the
   * allocated ones, so the last cluster of a file is legitimately cut short after its last allocated subcluster.
   */
  #checkData(host: bigint, length: bigint, entryWhat: () => string): void {
    if (host + length > this.fileSize) {
      throw this.#malformed(`data of ${entryWhat()} at offset ${hex(host)} (${length} bytes) lies outside the file (${this.fileSize} bytes)`);
    }
  }

  /**
   * The granule at `pos` merged with following ones of the same status in the same L2 table, up to `until` when
   * given (a read needs no more than its own range: without this, every small read walked a whole L2 table).
   */
  #run(v: ResolvedView, pos: bigint, until?: bigint): Qcow2Extent {
    let run = this.#granule(v, pos);
    const tableEnd = minBig(v.end, (pos / this.#bytesPerL2 + 1n) * this.#bytesPerL2);
    const limit = until === undefined ? tableEnd : minBig(tableEnd, until);
    // Bounded by the granules in one L2 table (at most 32 per entry).
    while (run.kind !== "compressed" && run.offset + run.length < limit) {
      const next = this.#granule(v, run.offset + run.length);
      if (!mergeable(run, next)) break;
      run = { ...run, length: run.length + next.length };
    }
    return run;
  }

  // ---- reading ----------------------------------------------------------------------------------------------

  #readView(v: ResolvedView, offset: bigint, length: number): Buffer {
    const out = Buffer.alloc(length);
    const end = offset + BigInt(length);
    // Bounded: each pass consumes at least one byte (every run is non-empty), at most one pass per granule.
    for (let pos = offset; pos < end; ) {
      const run = this.#run(v, pos, end);
      const n = Number(minBig(run.length, end - pos));
      const at = Number(pos - offset);
      switch (run.kind) {
        case "data":
          this.#readInto(run.hostOffset, out.subarray(at, at + n), "data cluster");
          break;
        case "zero":
          break;
        case "unallocated":
          if (v.useBacking) this.#readBacking(pos, n).copy(out, at);
          break;
        case "compressed": {
          const cluster = this.#inflate(run);
          const intra = Number(pos % BigInt(this.#clusterSize));
          cluster.copy(out, at, intra, intra + n);
          break;
        }
      }
      pos += BigInt(n);
    }
    return out;
  }

  #readBacking(pos: bigint, n: number): Buffer {
    const backing = this.#backing;
    if (!backing || pos >= backing.virtualSize) return Buffer.alloc(n);
    // A backing file smaller than the overlay reads as zeros past its end.
    const covered = Number(minBig(BigInt(n), backing.virtualSize - pos));
    const got = backing.read(pos, covered);
    if (got.length !== covered) throw new BugError(`backing reader returned ${got.length} bytes for a read of ${covered}`);
    return covered === n ? got : Buffer.concat([got, Buffer.alloc(n - covered)]);
  }

  #inflate(run: Extract<Qcow2Extent, { kind: "compressed" }>): Buffer {
    if (run.compression === "zstd") throw this.#unsupported(`zstd-compressed clusters are not supported (cluster at offset ${hex(run.hostOffset)})`);
    return this.#cache.get(`Z@${run.hostOffset}+${run.compressedLength}`, () => {
      this.#inflateBudget?.charge(this.#clusterSize, `compressed cluster at offset ${hex(run.hostOffset)} of ${q(this.path)}`);
      const input = this.#readExact(run.hostOffset, run.compressedLength, "compressed cluster");
      let out: Buffer;
      try {
        // Z_SYNC_FLUSH: the stream may end mid-sector and bytes after it belong to the next cluster; QEMU
        // also stops once a whole cluster came out. maxOutputLength caps the allocation at one cluster.
        out = inflateRawSync(input, { finishFlush: zlibConstants.Z_SYNC_FLUSH, maxOutputLength: this.#clusterSize });
      } catch (err) {
        throw this.#malformed(`compressed cluster at offset ${hex(run.hostOffset)} does not inflate to one cluster: ${messageOf(err)}`, err);
      }
      if (out.length !== this.#clusterSize) {
        throw this.#malformed(`compressed cluster at offset ${hex(run.hostOffset)} inflates to ${out.length} bytes, not one cluster (${this.#clusterSize})`);
      }
      return out;
    });
  }
}

function mergeable(a: Qcow2Extent, b: Qcow2Extent): boolean {
  if (a.offset + a.length !== b.offset) return false;
  switch (a.kind) {
    case "data":
      return b.kind === "data" && a.hostOffset + a.length === b.hostOffset;
    case "zero":
      if (b.kind !== "zero") return false;
      if (a.hostOffset === undefined || b.hostOffset === undefined) return a.hostOffset === b.hostOffset;
      return a.hostOffset + a.length === b.hostOffset;
    case "unallocated":
      return b.kind === "unallocated";
    case "compressed":
      return false;
  }
}

/**
 * Refuses an image that would make QEMU open a file vigil did not choose: any external data file, or a backing
 * file (and format) other than `expected.backing`. Call it on every imported or guest-written image before it
 * is handed to QEMU. `expected.backing.file` undefined: a backing file must be named, but any plain name will do
 * (the caller re-points it, e.g. `qemu-img rebase -u`) — never a `json:` pseudo-file, which is a whole block
 * graph (other drivers, other files), not a name.
 */
export function assertSelfContained(header: Qcow2Header, label: string, expected: { backing?: { file?: string; format?: string } } = {}): void {
  const file = header.externalDataFile;
  if (file !== undefined) {
    throw new VigilError("VIGIL_BAD_REQUEST", `Cannot use qcow2 image ${q(label)}: it keeps its data in an external file${file === "" ? " (unnamed)" : ` ${q(file)}`}`);
  }
  const want = expected.backing;
  if (header.backingFile === undefined) {
    if (want) throw new VigilError("VIGIL_BAD_REQUEST", `Cannot use qcow2 image ${q(label)}: it has no backing file, expected ${want.file === undefined ? "one" : q(want.file)}`);
    return;
  }
  if (!want) throw new VigilError("VIGIL_BAD_REQUEST", `Cannot use qcow2 image ${q(label)}: it names an unexpected backing file ${q(header.backingFile)}`);
  if (want.file === undefined && header.backingFile.startsWith("json:")) {
    throw new VigilError("VIGIL_BAD_REQUEST", `Cannot use qcow2 image ${q(label)}: its backing file is a json: block graph, not a file name`);
  }
  if (want.file !== undefined && header.backingFile !== want.file) {
    throw new VigilError("VIGIL_BAD_REQUEST", `Cannot use qcow2 image ${q(label)}: it names backing file ${q(header.backingFile)}, expected ${q(want.file)}`);
  }
  if (want.format !== undefined && header.backingFormat !== want.format) {
    throw new VigilError(
      "VIGIL_BAD_REQUEST",
      `Cannot use qcow2 image ${q(label)}: its backing format is ${header.backingFormat === undefined ? "not recorded" : q(header.backingFormat)}, expected ${q(want.format)}`,
    );
  }
}
