import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { VigilError } from "../errors.ts";
import { RawImage } from "./block-reader.ts";
import { Qcow2Error, Qcow2Image, assertSelfContained, type Qcow2View } from "./qcow2.ts";
import { fromQemu, fromReader, io, makeImage, qemuMap, qemuRaw, snapshot, tool } from "./testing/qcow2-fixtures.ts";

function tempDir(t: { after: (fn: () => void) => void }): string {
  const dir = mkdtempSync(join(tmpdir(), "vigil-qcow2-"));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

function openImage(t: { after: (fn: () => void) => void }, path: string, options: Parameters<typeof Qcow2Image.open>[1] = {}): Qcow2Image {
  const img = Qcow2Image.open(path, options);
  t.after(() => img.close());
  return img;
}

/** Reads a whole view in pieces no larger than the read limit. */
function readAll(img: Qcow2Image, view?: Qcow2View): Buffer {
  const size = view && "snapshot" in view ? (img.snapshots().find((s) => s.name === view.snapshot)?.diskSize ?? 0n) : img.virtualSize;
  const parts: Buffer[] = [];
  for (let pos = 0n; pos < size; pos += 8n << 20n) {
    const n = Number(size - pos < 8n << 20n ? size - pos : 8n << 20n);
    parts.push(img.read(pos, n, view));
  }
  return Buffer.concat(parts);
}

/** The reader and the QEMU tools agree on every view of `path`: map (active view only) and bytes. */
function assertAgreesWithQemu(img: Qcow2Image, path: string, snapshots: readonly string[] = []): void {
  assert.deepEqual(fromReader(img.extents()), fromQemu(qemuMap(path)), `map of ${path}`);
  assert.ok(readAll(img).equals(qemuRaw(path)), `bytes of ${path}`);
  for (const name of snapshots) assert.ok(readAll(img, { snapshot: name }).equals(qemuRaw(path, name)), `bytes of snapshot ${name} of ${path}`);
}

const isMalformed = (pattern: RegExp) => (e: unknown) => {
  assert.ok(e instanceof Qcow2Error, `expected a Qcow2Error, got ${String(e)}`);
  assert.equal(e.reason, "malformed", e.message);
  assert.equal(e.code, "VIGIL_BAD_REQUEST");
  assert.match(e.message, pattern);
  return true;
};

test("version 3: map, bytes and snapshot views agree with qemu-img, across overwrites and zero writes", (t) => {
  const dir = tempDir(t);
  const path = makeImage(join(dir, "v3.qcow2"), "8M", {
    io: ["write -P 0xab 1M 64k", "write -z 2M 64k", "write -P 0x11 3M 100k", "write -P 0x33 5243392 1024", "write -P 0x44 8322048 65536"],
  });
  snapshot(path, "s1");
  io(path, "write -P 0xcd 1M 4k");
  io(path, "write -z 3M 64k"); // on an allocated cluster: QEMU keeps it, flagged zero (preallocated zero)
  io(path, "write -P 0x55 6M 256k");
  snapshot(path, "s2");
  io(path, "write -P 0x66 6M 64k");
  const img = openImage(t, path);
  assert.equal(img.header.version, 3);
  assert.equal(img.header.clusterSize, 65536);
  assert.equal(img.virtualSize, 8n << 20n);
  assertAgreesWithQemu(img, path, ["s1", "s2"]);
  // The preallocated zero cluster carries its host offset; QEMU reports the same one.
  const z = img.map(3n << 20n);
  const qz = qemuMap(path).find((e) => e.start === 3 << 20);
  assert.equal(z.kind, "zero");
  assert.equal(z.kind === "zero" ? z.hostOffset : undefined, qz?.offset === undefined ? undefined : BigInt(qz.offset));
  // map() of an offset inside a run starts there and reports where that byte lives.
  const d = img.map((1n << 20n) + 100n);
  assert.equal(d.kind, "data");
  assert.equal(d.offset, (1n << 20n) + 100n);
  // qemu-io's own pattern check over what the reader returns for the same range.
  assert.ok(img.read(6n << 20n, 65536).equals(Buffer.alloc(65536, 0x66)));
  assert.match(tool("qemu-io", ["-r", "-f", "qcow2", "-c", "read -P 0x66 6M 64k", path]), /read 65536\/65536/);
  assert.ok(img.read(1n << 20n, 4096, { snapshot: "s1" }).equals(Buffer.alloc(4096, 0xab)));
  assert.ok(img.read(1n << 20n, 4096, { snapshotId: "2" }).equals(Buffer.alloc(4096, 0xcd)));
});

test("version 2 images and cluster sizes from 512 bytes to 2 MiB agree with qemu-img", (t) => {
  const dir = tempDir(t);
  const cases: Array<{ name: string; o: string[] }> = [
    { name: "v2", o: ["compat=0.10"] },
    { name: "c512", o: ["cluster_size=512"] },
    { name: "c4k", o: ["cluster_size=4096"] },
    { name: "c2m", o: ["cluster_size=2M"] },
    { name: "v2c1k", o: ["compat=0.10", "cluster_size=1024"] },
  ];
  for (const c of cases) {
    // 4095 KiB: the disk does not end on an L2 or cluster boundary for most sizes.
    const path = makeImage(join(dir, `${c.name}.qcow2`), "4095k", {
      o: c.o,
      io: ["write -P 0x01 0 1536", "write -P 0x02 1M 300k", "write -z 2M 8k", "write -P 0x03 4190208 1024"],
    });
    snapshot(path, "a");
    io(path, "write -P 0x04 1000k 100k");
    const img = openImage(t, path);
    assert.equal(img.header.version, c.o.includes("compat=0.10") ? 2 : 3, c.name);
    assertAgreesWithQemu(img, path, ["a"]);
  }
});

test("zlib-compressed clusters inflate to what qemu-img reads, at every cluster size", (t) => {
  const dir = tempDir(t);
  const src = makeImage(join(dir, "src.qcow2"), "3M", { io: ["write -P 0x5a 0 200k", "write -P 0x00 1M 64k", "write -P 0x77 1500k 700k"] });
  // Incompressible data too: qemu-img then stores that cluster uncompressed.
  writeFileSync(join(dir, "noise.bin"), Buffer.from(Array.from({ length: 128 * 1024 }, (_, i) => (i * 2654435761) >>> 24)));
  tool("qemu-io", ["-f", "qcow2", "-c", "write -s " + join(dir, "noise.bin") + " 2400k 128k", src]);
  for (const cs of ["512", "4k", "64k", "2M"]) {
    const path = join(dir, `c-${cs}.qcow2`);
    tool("qemu-img", ["convert", "-c", "-O", "qcow2", "-o", `cluster_size=${cs}`, src, path]);
    const img = openImage(t, path);
    assert.ok([...img.extents()].some((e) => e.kind === "compressed"), `${cs}: has compressed clusters`);
    assertAgreesWithQemu(img, path);
  }
});

test("zstd-compressed clusters are mapped but reading them is refused clearly", (t) => {
  const dir = tempDir(t);
  const src = makeImage(join(dir, "src.qcow2"), "2M", { io: ["write -P 0x5a 0 64k"] });
  const path = join(dir, "z.qcow2");
  tool("qemu-img", ["convert", "-c", "-O", "qcow2", "-o", "compression_type=zstd", src, path]);
  const img = openImage(t, path);
  assert.equal(img.header.compressionType, "zstd");
  const m = img.map(0n);
  assert.equal(m.kind, "compressed");
  assert.equal(m.kind === "compressed" ? m.compression : "", "zstd");
  assert.ok(img.read(1n << 20n, 512).equals(Buffer.alloc(512)), "unallocated clusters still read");
  assert.throws(
    () => img.read(0n, 512),
    (e: unknown) => e instanceof Qcow2Error && e.reason === "unsupported" && /zstd-compressed clusters are not supported/.test(e.message),
  );
});

test("extended L2 entries (subclusters) agree with qemu-img, including zero and partial subclusters", (t) => {
  const dir = tempDir(t);
  for (const cs of ["16k", "64k", "2M"]) {
    const path = makeImage(join(dir, `x-${cs}.qcow2`), "6M", {
      o: ["extended_l2=on", `cluster_size=${cs}`],
      io: ["write -P 0xab 0 64k", "write -z 4k 4k", "write -P 0x22 1052672 2k", "write -z 2M 8k", "write -P 0x33 3M 1k"],
    });
    snapshot(path, "x");
    io(path, "write -P 0x44 8k 1k");
    io(path, "write -z 3M 512");
    const img = openImage(t, path);
    assert.equal(img.header.extendedL2, true);
    assertAgreesWithQemu(img, path, ["x"]);
  }
});

test("an overlay reads through to its backing image, and past the backing image's end as zeros", (t) => {
  const dir = tempDir(t);
  const base = makeImage(join(dir, "base.qcow2"), "4M", { io: ["write -P 0x10 0 2M", "write -P 0x11 3M 1M"] });
  const top = makeImage(join(dir, "top.qcow2"), "6M", { backing: "base.qcow2", io: ["write -P 0x20 1M 64k", "write -z 3M 64k", "write -P 0x21 5M 4k"] });
  const baseImg = openImage(t, base);
  const img = openImage(t, top, { backing: baseImg });
  assert.equal(img.header.backingFile, "base.qcow2");
  assert.equal(img.header.backingFormat, "qcow2");
  assertAgreesWithQemu(img, top);
  assert.equal(img.map(0n).kind, "unallocated");
  // Without a backing reader the same clusters read as zeros.
  const alone = openImage(t, top);
  assert.ok(alone.read(0n, 4096).equals(Buffer.alloc(4096)));

  const raw = join(dir, "base.raw");
  writeFileSync(raw, Buffer.alloc(3 << 20, 0x99));
  const rawTop = makeImage(join(dir, "rawtop.qcow2"), "4M", { backing: "base.raw", backingFormat: "raw", io: ["write -P 0x42 1M 4k"] });
  const rawBase = RawImage.open(raw);
  t.after(() => rawBase.close());
  const img2 = openImage(t, rawTop, { backing: rawBase });
  assert.equal(img2.header.backingFormat, "raw");
  assert.ok(readAll(img2).equals(qemuRaw(rawTop)));
});

test("snapshots() agrees with qemu-img info, and disk-size changes are tracked per snapshot", (t) => {
  const dir = tempDir(t);
  const path = makeImage(join(dir, "s.qcow2"), "4M", { io: ["write -P 1 0 4k"] });
  snapshot(path, "first");
  snapshot(path, "second snapshot, with a long name: ünïcode");
  tool("qemu-img", ["resize", "-q", path, "200M"]);
  snapshot(path, "grown");
  const img = openImage(t, path);
  const info = JSON.parse(tool("qemu-img", ["info", "--output=json", path])) as {
    snapshots: Array<{ id: string; name: string; "vm-state-size": number; "date-sec": number; "date-nsec": number; "vm-clock-sec": number; "vm-clock-nsec": number; icount?: number }>;
  };
  const ours = img.snapshots();
  assert.equal(ours.length, 3);
  assert.deepEqual(
    ours.map((s) => ({ id: s.id, name: s.name, vm: Number(s.vmStateSize), ds: s.dateSec, dn: s.dateNsec, clock: s.vmClockNsec, icount: s.icount })),
    info.snapshots.map((s) => ({
      id: s.id,
      name: s.name,
      vm: s["vm-state-size"],
      ds: s["date-sec"],
      dn: s["date-nsec"],
      clock: BigInt(s["vm-clock-sec"]) * 1_000_000_000n + BigInt(s["vm-clock-nsec"]),
      icount: s.icount === undefined ? undefined : BigInt(s.icount),
    })),
  );
  assert.deepEqual(
    ours.map((s) => s.diskSize),
    [4n << 20n, 4n << 20n, 200n << 20n],
  );
  assert.equal(img.virtualSize, 200n << 20n);
  assert.ok(img.read(0n, 4096, { snapshot: "first" }).equals(Buffer.alloc(4096, 1)));
  assert.throws(() => img.read(4n << 20n, 1, { snapshot: "first" }), (e: unknown) => e instanceof Qcow2Error && e.reason === "out-of-range");
  assert.throws(() => img.read(0n, 1, { snapshot: "nope" }), (e: unknown) => e instanceof Qcow2Error && e.reason === "not-found" && e.code === "VIGIL_NOT_FOUND");
});

test("external data files and encryption are reported, and reading such images is refused", (t) => {
  const dir = tempDir(t);
  const ext = join(dir, "ext.qcow2");
  // An absolute data file name: a relative one is created in the working directory, not beside the image.
  tool("qemu-img", ["create", "-q", "-f", "qcow2", "-o", `data_file=${join(dir, "ext.raw")},data_file_raw=on`, ext, "1M"]);
  assert.ok(existsSync(join(dir, "ext.raw")), "the data file is in the test's temp dir");
  const e = openImage(t, ext);
  assert.equal(e.header.externalDataFile, join(dir, "ext.raw"));
  assert.equal(e.header.externalDataRaw, true);
  assert.throws(() => e.read(0n, 512), (err: unknown) => err instanceof Qcow2Error && err.reason === "unsupported" && err.message.includes(`external data file ("${join(dir, "ext.raw")}")`));
  assert.throws(() => assertSelfContained(e.header, "ext.qcow2"), (err: unknown) => err instanceof Error && err.message.includes(`keeps its data in an external file "${join(dir, "ext.raw")}"`));

  // The data-file bit without the name extension still counts as an external data file.
  const bytes = readFileSync(ext);
  const noName = Buffer.from(bytes);
  for (let pos = 112; pos + 8 <= 65536; ) {
    const type = noName.readUInt32BE(pos);
    const len = noName.readUInt32BE(pos + 4);
    if (type === 0) break;
    if (type === 0x44415441) noName.writeUInt32BE(0x12345678, pos); // now an unknown extension
    pos += 8 + Math.ceil(len / 8) * 8;
  }
  const unnamed = Qcow2Image.fromBytes("unnamed", noName);
  assert.equal(unnamed.header.externalDataFile, "");
  assert.throws(() => assertSelfContained(unnamed.header, "unnamed"), /external file \(unnamed\)/);

  const enc = join(dir, "enc.qcow2");
  // QEMU benchmarks PBKDF2 by the thread's CPU time, which the kernel counts in ticks: on a loaded machine a round
  // can read as 0 ms and qemu-img gives up ("Unable to get accurate CPU usage"), whatever iter-time says. That is
  // the fixture failing, not the reader: try again, a bounded number of times.
  for (let attempt = 1; ; attempt++) {
    try {
      tool("qemu-img", ["create", "-q", "--object", "secret,id=s0,data=pw", "-f", "qcow2", "-o", "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=200", enc, "1M"]);
      break;
    } catch (err) {
      if (attempt >= 8 || !/Unable to get accurate CPU usage/.test(String((err as { stderr?: unknown }).stderr ?? err))) throw err;
    }
  }
  const en = openImage(t, enc);
  assert.equal(en.header.encryption, "luks");
  assert.ok(en.header.cryptoHeader && en.header.cryptoHeader.length > 0n);
  assert.throws(() => en.read(0n, 512), (err: unknown) => err instanceof Qcow2Error && err.reason === "unsupported" && /encrypted \(luks\)/.test(err.message));
});

test("assertSelfContained accepts only the expected backing file and format", (t) => {
  const dir = tempDir(t);
  makeImage(join(dir, "base.qcow2"), "1M");
  const plain = openImage(t, makeImage(join(dir, "plain.qcow2"), "1M"));
  const top = openImage(t, makeImage(join(dir, "top.qcow2"), "1M", { backing: "base.qcow2" }));
  assertSelfContained(plain.header, "plain");
  assertSelfContained(top.header, "top", { backing: { file: "base.qcow2", format: "qcow2" } });
  const refused = (f: () => void, pattern: RegExp) => assert.throws(f, (e: unknown) => e instanceof VigilError && e.code === "VIGIL_BAD_REQUEST" && pattern.test(e.message));
  refused(() => assertSelfContained(top.header, "top"), /unexpected backing file "base.qcow2"/);
  refused(() => assertSelfContained(top.header, "top", { backing: { file: "/etc/shadow" } }), /expected "\/etc\/shadow"/);
  refused(() => assertSelfContained(top.header, "top", { backing: { file: "base.qcow2", format: "raw" } }), /backing format is "qcow2", expected "raw"/);
  refused(() => assertSelfContained(plain.header, "plain", { backing: { file: "base.qcow2" } }), /has no backing file/);
});

test("requests outside the disk or above the read limit are refused, and the image can be closed twice", (t) => {
  const dir = tempDir(t);
  const path = makeImage(join(dir, "r.qcow2"), "1M");
  const img = Qcow2Image.open(path, { limits: { maxReadBytes: 4096 } });
  const outOfRange = (e: unknown) => e instanceof Qcow2Error && e.reason === "out-of-range" && e.code === "VIGIL_BAD_REQUEST";
  assert.throws(() => img.read(0n, 4097), outOfRange);
  assert.throws(() => img.read((1n << 20n) - 10n, 11), outOfRange);
  assert.throws(() => img.read(-1n, 1), outOfRange);
  assert.throws(() => img.read(0n, 1.5), outOfRange);
  assert.throws(() => img.map(1n << 20n), outOfRange);
  assert.equal(img.read((1n << 20n) - 10n, 10).length, 10);
  assert.equal(img.read(0n, 0).length, 0);
  img.close();
  img.close();
  assert.throws(() => Qcow2Image.open(join(dir, "missing.qcow2")), (e: unknown) => e instanceof VigilError && e.code === "VIGIL_NOT_FOUND");
});

test("a tiny metadata cache still gives the same answers", (t) => {
  const dir = tempDir(t);
  const path = makeImage(join(dir, "c.qcow2"), "2M", { o: ["cluster_size=512"], io: ["write -P 0x61 0 1M", "write -P 0x62 1536k 100k"] });
  const img = openImage(t, path, { limits: { cacheBytes: 0 } });
  assertAgreesWithQemu(img, path);
});

// ---- malformed images: each mutation of a real image is refused with a message naming what and where ----------

test("malformed headers and tables are refused with the structure and offset named", (t) => {
  const dir = tempDir(t);
  const path = makeImage(join(dir, "m.qcow2"), "4M", { io: ["write -P 0xab 1M 64k"] });
  snapshot(path, "s");
  const good = readFileSync(path);
  const img = openImage(t, path);
  const l1 = Number(img.header.l1TableOffset);
  const l2 = Number(good.readBigUInt64BE(l1) & 0x00ff_ffff_ffff_fe00n);
  const l2e = l2 + 16 * 8; // 1 MiB / 64 KiB = entry 16
  const snap = Number(img.header.snapshotsOffset);
  // `mutate` edits the copy in place, or returns a replacement buffer (Buffer writes return numbers: ignored).
  const bad = (mutate: (b: Buffer) => unknown, pattern: RegExp, use: (i: Qcow2Image) => unknown = (i) => i.read(1n << 20n, 512)) => {
    const b = Buffer.from(good);
    const replaced = mutate(b);
    assert.throws(() => use(Qcow2Image.fromBytes("m", Buffer.isBuffer(replaced) ? replaced : b)), isMalformed(pattern));
  };
  bad((b) => b.writeUInt32BE(0x514649fc, 0), /no qcow2 magic at offset 0x0/);
  bad((b) => b.writeUInt32BE(30, 20), /cluster_bits 30 at offset 0x14/);
  bad((b) => b.writeUInt32BE(105, 100), /header_length 105 at offset 0x64/);
  bad((b) => b.writeUInt32BE(7, 96), /refcount_order 7/);
  const pastEnd = BigInt(Math.ceil(good.length / 65536) * 65536);
  bad((b) => b.writeBigUInt64BE(pastEnd, 40), /active L1 table at offset 0x[0-9a-f]+ \(1 entries\) lies outside the file/);
  bad((b) => b.writeBigUInt64BE(BigInt(l1 + 8), 40), /active L1 table at offset 0x[0-9a-f]+ is not cluster-aligned/);
  bad((b) => b.writeUInt32BE(0, 36), /active L1 table has 0 entries \(offset 0x24\) but virtual size 4194304 needs 1/);
  bad((b) => b.writeBigUInt64BE(1n << 60n, 24), /virtual size \d+ at offset 0x18 needs \d+ L1 entries, more than the limit/);
  bad((b) => b.writeBigUInt64BE(0x10000n * 4096n, l1), /L2 table of active L1 table entry 0 \(at offset 0x[0-9a-f]+\) at offset 0x10000000 \(65536 bytes\) lies outside the file/);
  bad((b) => b.writeBigUInt64BE(BigInt(l2) | 0x100n, l1), /active L1 table entry 0 .* has reserved bits set/);
  bad((b) => b.writeBigUInt64BE(BigInt(l2 + 512), l1), /L2 table of active L1 table entry 0 .* is not cluster-aligned/);
  bad((b) => b.writeBigUInt64BE(0x7fff0000n, l2e), /data of L2 entry 16 \(at offset 0x[0-9a-f]+\) at offset 0x7fff0000 .* lies outside the file/);
  bad((b) => b.writeBigUInt64BE((b.readBigUInt64BE(l2e) & ~(1n << 63n)) | 2n, l2e), /L2 entry 16 .* has reserved bits set/);
  bad((b) => b.writeBigUInt64BE((1n << 62n) | (1n << 63n) | 0x50000n, l2e), /compressed and also marked COPIED/);
  bad((b) => b.writeBigUInt64BE((1n << 62n) | 0xfffffffn, l2e), /compressed cluster of L2 entry 16 .* lies outside the file/);
  bad((b) => b.writeBigUInt64BE((1n << 62n) | BigInt(l1), l2e), /compressed cluster at offset 0x[0-9a-f]+ (does not inflate|inflates to)/);
  bad((b) => b.writeUInt32BE(2, 60), /snapshot table entry 1 at offset 0x[0-9a-f]+ runs past the end of the file/, (i) => i.snapshots());
  bad((b) => b.writeUInt32BE(100_000, 60), /100000 snapshots \(offset 0x3c\), more than the limit of 10000/);
  bad((b) => b.writeUInt32BE(4096, snap + 36), /snapshot table entry 0 at offset 0x[0-9a-f]+ has 4096 bytes of extra data \(at most 1024\)/);
  bad((b) => b.writeBigUInt64BE(BigInt(good.length) - 8n, snap), /L1 table of snapshot "s" \(snapshot table entry 0 at offset 0x[0-9a-f]+\) at offset 0x[0-9a-f]+ is not cluster-aligned/);
  bad((b) => b.writeBigUInt64BE(0x100000n, 8), /backing file name offset 0x100000 at offset 0x8 is not inside the first cluster/);
  bad(
    (b) => {
      b.writeBigUInt64BE(0x1000n, 8);
      b.writeUInt32BE(2000, 16);
    },
    /backing file name length 2000 at offset 0x10/,
  );
  bad(
    (b) => {
      b.writeBigUInt64BE(0x1000n, 8);
      b.writeUInt32BE(4, 16);
      b.write("a\0b!", 0x1000, "latin1");
    },
    /backing file name at offset 0x1000 contains a NUL byte/,
  );
  bad((b) => b.writeBigUInt64BE(b.readBigUInt64BE(72) | 8n, 72), /compression_type 0 at offset 0x68 does not agree with incompatible feature bit 3/);
  // Two backing-format extensions could make two readers see different formats.
  bad(
    (b) => {
      b.writeUInt32BE(0xe2792aca, 112);
      b.writeUInt32BE(5, 116);
      b.write("qcow2\0\0\0", 120, "latin1");
      b.writeUInt32BE(0xe2792aca, 128);
      b.writeUInt32BE(3, 132);
      b.write("raw\0\0\0\0\0", 136, "latin1");
      b.writeUInt32BE(0, 144);
    },
    /header extension 0xe2792aca at offset 0x80 appears twice/,
  );
  bad(
    (b) => {
      b.writeUInt32BE(0x6803f857, 112);
      b.writeUInt32BE(0xfff0, 116);
    },
    /header extension 0x6803f857 at offset 0x70 \(65520 bytes\) runs past the end of the header area/,
  );
  bad((b) => b.subarray(0, 50), /the file has 50 bytes, fewer than a qcow2 header/);
  bad((b) => b.subarray(0, Number(img.header.l1TableOffset) + 4), /active L1 table .* lies outside the file/);
});

test("unknown incompatible features and versions are refused as unsupported, named from the feature table", (t) => {
  const dir = tempDir(t);
  const good = readFileSync(makeImage(join(dir, "f.qcow2"), "1M"));
  const unsupported = (b: Buffer, pattern: RegExp) =>
    assert.throws(() => Qcow2Image.fromBytes("f", b), (e: unknown) => e instanceof Qcow2Error && e.reason === "unsupported" && pattern.test(e.message));
  const v4 = Buffer.from(good);
  v4.writeUInt32BE(4, 4);
  unsupported(v4, /version 4 at offset 0x4 \(only 2 and 3 are supported\)/);
  const bit9 = Buffer.from(good);
  bit9.writeBigUInt64BE(1n << 9n, 72);
  unsupported(bit9, /incompatible features this reader does not know: bit 9$/);
  // Rename the feature table's "dirty bit" entry (type 0, bit 0) to describe bit 9 instead.
  const named = Buffer.from(bit9);
  const at = named.indexOf(Buffer.from("dirty bit"));
  assert.ok(at > 0);
  named[at - 1] = 9;
  unsupported(named, /bit 9 \("dirty bit"\)/);
  const zstdType = Buffer.from(good);
  zstdType.writeBigUInt64BE(8n, 72);
  zstdType[104] = 7;
  unsupported(zstdType, /compression_type 7 at offset 0x68 is unknown/);
});
