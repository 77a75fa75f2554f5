import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { crc32 } from "node:zlib";
import fc from "fast-check";
import { type BlockReader, RawImage } from "../storage/block-reader.ts";
import { openChain } from "../storage/chain.ts";
import { PartitionError, type PartitionTable, readPartitions } from "./partitions.ts";

const MiB = 1 << 20;

function tempDir(t: { after: (fn: () => void) => void }): string {
  const dir = mkdtempSync(join(tmpdir(), "vigil-parts-"));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** A raw disk file partitioned by sfdisk from `script`. */
function sfdiskImage(path: string, sizeMiB: number, script: string): string {
  writeFileSync(path, Buffer.alloc(0));
  execFileSync("truncate", ["-s", `${sizeMiB}M`, path]);
  execFileSync("sfdisk", ["-q", "--no-reread", "--no-tell-kernel", path], { input: script, stdio: ["pipe", "ignore", "pipe"] });
  return path;
}

interface SfdiskJson {
  partitiontable: {
    label: "dos" | "gpt";
    id: string;
    partitions: Array<{ node: string; start: number; size: number; type: string; uuid?: string; name?: string; bootable?: boolean; attrs?: string }>;
  };
}

function sfdiskJson(path: string): SfdiskJson {
  return JSON.parse(execFileSync("sfdisk", ["--json", path], { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] })) as SfdiskJson;
}

const ATTR_BITS: Record<string, number> = { RequiredPartition: 0, NoBlockIOProtocol: 1, LegacyBIOSBootable: 2 };

function attrsOf(text: string | undefined): bigint {
  let bits = 0n;
  for (const word of (text ?? "").split(/[\s,]+/).filter(Boolean)) {
    const m = /^GUID:(\d+)$/.exec(word);
    const bit = m ? Number(m[1]) : ATTR_BITS[word];
    assert.ok(bit !== undefined, `attribute ${word}`);
    bits |= 1n << BigInt(bit);
  }
  return bits;
}

/** What sfdisk says, in the reader's terms. */
function expected(path: string): unknown {
  const t = sfdiskJson(path).partitiontable;
  return {
    scheme: t.label === "dos" ? "mbr" : "gpt",
    id: t.id.toLowerCase(),
    partitions: t.partitions.map((p) => ({
      number: Number(/(\d+)$/.exec(p.node)?.[1]),
      start: BigInt(p.start) * 512n,
      size: BigInt(p.size) * 512n,
      type: p.type.toLowerCase(),
      ...(t.label === "dos" ? { bootable: p.bootable === true } : { uuid: p.uuid?.toLowerCase(), name: p.name ?? "", attributes: attrsOf(p.attrs) }),
    })),
  };
}

function actual(table: PartitionTable): unknown {
  return {
    scheme: table.scheme,
    id: table.id,
    partitions: table.partitions.map((p) => ({
      number: p.number,
      start: p.start,
      size: p.size,
      type: p.type,
      ...(table.scheme === "mbr" ? { bootable: p.bootable } : { uuid: p.uuid, name: p.name, attributes: p.attributes }),
    })),
  };
}

function readRaw(t: { after: (fn: () => void) => void }, path: string): PartitionTable {
  const disk = RawImage.open(path);
  t.after(() => disk.close());
  return readPartitions(disk);
}

const GPT_SCRIPT = `label: gpt
label-id: 6A3F1C2E-0B1D-4E5F-9A8B-7C6D5E4F3A2B
start=2048, size=8M, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name="EFI system", attrs="RequiredPartition"
size=16M, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, uuid=0B0C6A39-4A7E-4D8E-8F3C-9B2D6F4F2A11, name="racine é", attrs="LegacyBIOSBootable GUID:60"
size=4M, type=0657FD6D-A4AB-43C4-84E5-0933C84B4F4F, name="swap"
start=40M, size=8M, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4
`;

const MBR_SCRIPT = `label: dos
label-id: 0x12345678
1M,8M,83,*
,8M,7
,30M,5
,4M,83
,4M,82
,,83
`;

test("GPT: partitions, GUIDs, names and attributes agree with sfdisk --json, raw and through a qcow2 chain", (t) => {
  const dir = tempDir(t);
  const path = sfdiskImage(join(dir, "gpt.raw"), 64, GPT_SCRIPT);
  const table = readRaw(t, path);
  assert.equal(table.usedBackup, false);
  assert.deepEqual(actual(table), expected(path));
  assert.equal(table.partitions.length, 4);
  // The same disk as a qcow2 overlay over a qcow2 base reads the same table.
  execFileSync("qemu-img", ["convert", "-f", "raw", "-O", "qcow2", path, join(dir, "base.qcow2")]);
  execFileSync("qemu-img", ["create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", join(dir, "ov.qcow2")]);
  const chain = openChain(join(dir, "ov.qcow2"));
  t.after(() => chain.close());
  assert.deepEqual(actual(readPartitions(chain)), expected(path));
});

test("MBR: primaries, the extended partition and its logical chain agree with sfdisk --json", (t) => {
  const dir = tempDir(t);
  const path = sfdiskImage(join(dir, "mbr.raw"), 64, MBR_SCRIPT);
  const table = readRaw(t, path);
  assert.deepEqual(actual(table), expected(path));
  assert.deepEqual(table.partitions.map((p) => p.kind), ["primary", "primary", "extended", "primary", "logical", "logical"]);
});

test("partitions are bounds-checked slices of the disk", (t) => {
  const dir = tempDir(t);
  const path = sfdiskImage(join(dir, "gpt.raw"), 64, GPT_SCRIPT);
  const bytes = readFileSync(path);
  const p2 = readRaw(t, path).partitions[1]!;
  bytes.fill(0x5a, Number(p2.start), Number(p2.start) + 4096);
  writeFileSync(path, bytes);
  const again = readRaw(t, path).partitions[1]!;
  assert.ok(again.reader.read(0n, 4096).equals(Buffer.alloc(4096, 0x5a)));
  assert.equal(again.reader.virtualSize, 16n * BigInt(MiB));
  assert.throws(() => again.reader.read(again.size - 1n, 2), PartitionError);
  assert.throws(() => again.reader.read(-1n, 1), PartitionError);
});

function flip(b: Buffer, at: number, mask: number): void {
  b.writeUInt8(b.readUInt8(at) ^ mask, at);
}

/** Recomputes the entry-array and header CRCs of the GPT header at `lba` (for crafting hostile tables). */
function fixGpt(bytes: Buffer, lba: number): void {
  const h = lba * 512;
  const size = bytes.readUInt32LE(h + 12);
  const entries = Number(bytes.readBigUInt64LE(h + 72)) * 512;
  const arrayBytes = bytes.readUInt32LE(h + 80) * bytes.readUInt32LE(h + 84);
  if (entries + arrayBytes <= bytes.length) bytes.writeUInt32LE(crc32(bytes.subarray(entries, entries + arrayBytes)), h + 88);
  bytes.writeUInt32LE(0, h + 16);
  bytes.writeUInt32LE(crc32(bytes.subarray(h, h + Math.min(512, Math.max(0, size)))), h + 16);
}

test("GPT: a bad primary header or entry array is read from the backup (as sfdisk does); both bad is refused", (t) => {
  const dir = tempDir(t);
  const path = sfdiskImage(join(dir, "gpt.raw"), 64, GPT_SCRIPT);
  const good = readFileSync(path);
  const want = expected(path);
  const last = good.length / 512 - 1;

  const badHeader = Buffer.from(good);
  flip(badHeader, 512 + 60, 0xff); // inside the disk GUID: the header CRC no longer matches
  writeFileSync(path, badHeader);
  const fromBackup = readRaw(t, path);
  assert.equal(fromBackup.usedBackup, true);
  assert.deepEqual(actual(fromBackup), want);
  assert.deepEqual(expected(path), want, "sfdisk reads the backup too");

  const badArray = Buffer.from(good);
  flip(badArray, 1024 + 56, 0x01); // the first entry's name: the array CRC no longer matches
  writeFileSync(path, badArray);
  assert.equal(readRaw(t, path).usedBackup, true);
  assert.deepEqual(actual(readRaw(t, path)), want);

  const both = Buffer.from(badHeader);
  flip(both, last * 512 + 60, 0xff);
  writeFileSync(path, both);
  const disk = RawImage.open(path);
  t.after(() => disk.close());
  assert.throws(() => readPartitions(disk), (e: unknown) => e instanceof PartitionError && /primary GPT header at offset 512 fails its CRC32, and the backup GPT header/.test(e.message));
});

test("hostile tables are refused by name: overlaps, past the end, EBR loops, huge entry counts", (t) => {
  const dir = tempDir(t);
  const refused = (bytes: Buffer, pattern: RegExp, limits = {}) => {
    const p = join(dir, "h.raw");
    writeFileSync(p, bytes);
    const disk = RawImage.open(p);
    try {
      const t0 = performance.now();
      assert.throws(() => readPartitions(disk, limits), (e: unknown) => e instanceof PartitionError && pattern.test(e.message));
      assert.ok(performance.now() - t0 < 100);
    } finally {
      disk.close();
    }
  };
  const mbr = readFileSync(sfdiskImage(join(dir, "mbr.raw"), 64, MBR_SCRIPT));
  const entry = (b: Buffer, slot: number, lba: number, count: number) => {
    b.writeUInt32LE(lba, 446 + (slot - 1) * 16 + 8);
    b.writeUInt32LE(count, 446 + (slot - 1) * 16 + 12);
  };
  const overlap = Buffer.from(mbr);
  entry(overlap, 2, 4096, 16384); // inside partition 1 (sectors 2048..18431)
  refused(overlap, /overlaps/);
  const past = Buffer.from(mbr);
  entry(past, 4, 96256, 1 << 20);
  refused(past, /runs past the end of the disk/);
  const atZero = Buffer.from(mbr);
  entry(atZero, 2, 0, 100);
  refused(atZero, /starts at sector 0/);
  // The second EBR's link points back at the first EBR.
  const loop = Buffer.from(mbr);
  const ext = 34816;
  const secondEbr = ext + loop.readUInt32LE(ext * 512 + 446 + 16 + 8);
  loop.writeUInt32LE(0, secondEbr * 512 + 446 + 16 + 8);
  loop[secondEbr * 512 + 446 + 16 + 4] = 0x05;
  loop.writeUInt32LE(2048, secondEbr * 512 + 446 + 16 + 12);
  refused(loop, /EBR chain loops/);
  // A long EBR chain: stopped at the limit.
  refused(mbr, /more than 1 logical partitions/, { maxLogical: 1 });

  const gpt = readFileSync(sfdiskImage(join(dir, "gpt.raw"), 64, GPT_SCRIPT));
  const last = gpt.length / 512 - 1;
  const both = (b: Buffer, edit: (h: number) => void) => {
    for (const lba of [1, last]) {
      edit(lba * 512);
      fixGpt(b, lba);
    }
  };
  const huge = Buffer.from(gpt);
  both(huge, (h) => huge.writeUInt32LE(0xffffffff, h + 80));
  refused(huge, /lists 4294967295 entries, more than the limit of 4096/);
  // Entry 2 moved into entry 1's sectors, with every CRC made right.
  const lapped = Buffer.from(gpt);
  for (const arr of [2 * 512, Number(lapped.readBigUInt64LE(last * 512 + 72)) * 512]) lapped.writeBigUInt64LE(4096n, arr + 128 + 32);
  fixGpt(lapped, 1);
  fixGpt(lapped, last);
  refused(lapped, /overlaps/);
  const outside = Buffer.from(gpt);
  for (const arr of [2 * 512, Number(outside.readBigUInt64LE(last * 512 + 72)) * 512]) outside.writeBigUInt64LE(BigInt(last), arr + 128 + 40);
  fixGpt(outside, 1);
  fixGpt(outside, last);
  refused(outside, /outside the usable sectors/);
});

test("no 0x55aa signature: no partition table", (t) => {
  const dir = tempDir(t);
  writeFileSync(join(dir, "blank.raw"), Buffer.alloc(MiB));
  assert.deepEqual(readRaw(t, join(dir, "blank.raw")), { scheme: "none", partitions: [] });
});

/** An in-memory disk for the fuzz cases. */
function memDisk(bytes: Buffer): BlockReader {
  return {
    virtualSize: BigInt(bytes.length),
    read(offset, length) {
      if (offset < 0n || offset + BigInt(length) > BigInt(bytes.length)) throw new Error(`read outside the disk: ${offset}+${length}`);
      return Buffer.from(bytes.subarray(Number(offset), Number(offset) + length));
    },
  };
}

test("fuzz: mutated MBR, EBR and GPT structures give a PartitionError or partitions inside the disk that do not overlap", (t) => {
  const dir = tempDir(t);
  const smallGpt = "label: gpt\nstart=2048, size=1M, name=\"a\"\nsize=1M, type=0657FD6D-A4AB-43C4-84E5-0933C84B4F4F\nsize=2M\n";
  const smallMbr = "label: dos\n1M,1M,83,*\n,1M,7\n,4M,5\n,1M,83\n,1M,82\n";
  const seeds = [readFileSync(sfdiskImage(join(dir, "g.raw"), 8, smallGpt)), readFileSync(sfdiskImage(join(dir, "m.raw"), 8, smallMbr))];
  fc.assert(
    fc.property(
      fc.integer({ min: 0, max: seeds.length - 1 }),
      fc.array(
        fc.record({
          region: fc.constantFrom("mbr", "gpt-header", "gpt-entries", "backup", "ebr"),
          at: fc.nat(),
          // Bytes, and whole 32-bit fields (LBAs, counts, sizes) with boundary values.
          value: fc.oneof(fc.integer({ min: 0, max: 255 }), fc.constantFrom(0, 0xff, 0x05, 0xee, 0x80)),
          u32: fc.option(fc.oneof(fc.nat(), fc.constantFrom(0, 1, 2, 33, 127, 128, 4096, 16383, 16384, 0x7fffffff, 0xffffffff)), { nil: undefined }),
        }),
        { minLength: 1, maxLength: 8 },
      ),
      fc.boolean(),
      (which, edits, fixCrc) => {
        const bytes = Buffer.from(seeds[which]!);
        const last = bytes.length / 512 - 1;
        for (const e of edits) {
          // Aimed at the fields: the MBR/EBR entry area, the GPT header's 92 bytes, the first entries.
          const [base, span] =
            e.region === "mbr" ? [446, 64]
            : e.region === "gpt-header" ? [512, 92]
            : e.region === "gpt-entries" ? [1024, 512]
            : e.region === "backup" ? [last * 512, 92]
            : [2048 * 512 + ((e.at >> 9) % 8) * 512 * 2048 + 446, 64];
          const pos = base + (e.at % span);
          if (e.u32 !== undefined && pos + 4 <= bytes.length) bytes.writeUInt32LE(e.u32 >>> 0, pos & ~3);
          else if (pos < bytes.length) bytes[pos] = e.value;
        }
        if (fixCrc && which === 0) {
          fixGpt(bytes, 1);
          fixGpt(bytes, last);
        }
        const t0 = performance.now();
        let table: PartitionTable | undefined;
        try {
          table = readPartitions(memDisk(bytes));
        } catch (err) {
          assert.ok(err instanceof PartitionError, `unexpected ${String(err)}`);
        }
        assert.ok(performance.now() - t0 < 200, "bounded time");
        if (!table) return;
        const size = BigInt(bytes.length);
        const real = table.partitions.filter((p) => p.kind !== "extended");
        for (const p of table.partitions) {
          assert.ok(p.start > 0n && p.size > 0n && p.start + p.size <= size, `partition ${p.number} inside the disk`);
          p.reader.read(p.size - 1n, 1);
        }
        for (const a of real) for (const b of real) if (a !== b) assert.ok(a.start + a.size <= b.start || b.start + b.size <= a.start, "no overlap");
      },
    ),
    { numRuns: Number(process.env.VIGIL_FUZZ_RUNS ?? 400) },
  );
});
