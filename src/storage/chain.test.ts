import { test } from "node:test";
import assert from "node:assert/strict";
import { linkSync, mkdirSync, readdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { basename, join } from "node:path";
import { execFileSync } from "node:child_process";
import fc from "fast-check";
import { ChainError, type ChainOptions, openChain, type ImageChain } from "./chain.ts";
import { VigilError } from "../errors.ts";
import { Qcow2Error, Qcow2Image } from "./qcow2.ts";
import { io, makeImage, qemuRaw, tool, type QemuMapEntry } from "./testing/qcow2-fixtures.ts";
import { type ChainRun, runsOfChain, runsOfQemuMap } from "./testing/chain-fixtures.ts";

function tempDir(t: { after: (fn: () => void) => void }): string {
  const dir = mkdtempSync(join(tmpdir(), "vigil-chain-"));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

function open(t: { after: (fn: () => void) => void }, path: string, options: ChainOptions = {}): ImageChain {
  const chain = openChain(path, options);
  t.after(() => chain.close());
  return chain;
}

function readAll(chain: ImageChain): Buffer {
  const parts: Buffer[] = [];
  for (let pos = 0n; pos < chain.virtualSize; pos += 4n << 20n) {
    const n = Number(chain.virtualSize - pos < 4n << 20n ? chain.virtualSize - pos : 4n << 20n);
    parts.push(chain.read(pos, n));
  }
  return Buffer.concat(parts);
}

/** Every extent `qemu-img map` reports through the chain reads the same bytes through openChain as convert gives. */
function assertAgrees(path: string, options: ChainOptions = {}): void {
  const chain = openChain(path, options);
  try {
    const raw = qemuRaw(path);
    assert.equal(chain.virtualSize, BigInt(raw.length));
    const map = JSON.parse(tool("qemu-img", ["map", "--output=json", path])) as QemuMapEntry[];
    assert.ok(map.length > 0);
    for (const e of map) {
      // Extents are read in pieces below the per-read limit.
      for (let at = e.start; at < e.start + e.length; at += 4 << 20) {
        const n = Math.min(4 << 20, e.start + e.length - at);
        const got = chain.read(BigInt(at), n);
        assert.ok(got.equals(raw.subarray(at, at + n)), `${path}: bytes at ${at} (+${n}) of extent ${JSON.stringify(e)}`);
      }
    }
    assert.ok(readAll(chain).equals(raw), `${path}: whole disk`);
  } finally {
    chain.close();
  }
}

/**
 * `qemu-img map` through the chain, taken of dense copies of every layer: QEMU also reports holes of the host
 * files as zeros (see qemuMap in the fixtures), which is a property of the copies on disk, not of the images.
 */
function qemuChainMap(dir: string, top: string): ChainRun[] {
  const dense = `${dir}-dense`;
  execFileSync("cp", ["-r", "--sparse=never", dir, dense]);
  try {
    return runsOfQemuMap(JSON.parse(tool("qemu-img", ["map", "--output=json", join(dense, basename(top))])) as QemuMapEntry[]);
  } finally {
    rmSync(dense, { recursive: true, force: true });
  }
}

/** Refused with `reason`, quickly (the brief: < 100 ms per refusal). */
function assertRefused(fn: () => unknown, reason: string, pattern?: RegExp): void {
  const t0 = performance.now();
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof ChainError, `expected a ChainError, got ${String(e)}`);
    assert.equal(e.reason, reason, e.message);
    if (pattern) assert.match(e.message, pattern);
    return true;
  });
  const ms = performance.now() - t0;
  assert.ok(ms < 100, `refusal (${reason}) took ${ms.toFixed(1)} ms`);
}

/** Replaces the backing-format header extension's type by an unknown one: the image then records no format. */
function dropBackingFormat(path: string): void {
  const bytes = readFileSync(path);
  const img = Qcow2Image.fromBytes(path, bytes);
  const ext = img.header.extensions.find((e) => e.type === 0xe2792aca);
  img.close();
  assert.ok(ext, "backing format extension");
  bytes.writeUInt32BE(0x7fff0001, ext.offset);
  writeFileSync(path, bytes);
}

test("random chains of qcow2 over qcow2 over raw or qcow2: every qemu-img map extent reads as qemu-img convert gives, and the chain's extents are qemu-img map's", (t) => {
  const dir = tempDir(t);
  const MiB = 1 << 20;
  const write = fc.record({
    kind: fc.constantFrom("data", "data", "compressed", "zero", "zero-unmap", "discard"),
    cluster: fc.integer({ min: 0, max: 63 }),
    sub: fc.integer({ min: 0, max: 15 }),
    len: fc.integer({ min: 1, max: 48 }),
    byte: fc.integer({ min: 1, max: 255 }),
  });
  const layer = fc.record({ sizeMiB: fc.integer({ min: 2, max: 4 }), writes: fc.array(write, { maxLength: 5 }) });
  let run = 0;
  fc.assert(
    fc.property(fc.boolean(), fc.array(layer, { minLength: 1, maxLength: 4 }), (rawBottom, spec) => {
      const d = join(dir, `r${run++}`);
      mkdirSync(d);
      let below: { name: string; format: string } | undefined;
      let top = "";
      spec.forEach((l, i) => {
        const name = `l${i}.${i === 0 && rawBottom ? "raw" : "qcow2"}`;
        const path = join(d, name);
        if (i === 0 && rawBottom) {
          const buf = Buffer.alloc(l.sizeMiB * MiB);
          for (const w of l.writes) buf.fill(w.byte, w.cluster * 65536, Math.min(buf.length, w.cluster * 65536 + w.len * 4096));
          writeFileSync(path, buf);
        } else {
          // Relative backing names, as vigil's overlays use: resolved against the image's directory.
          makeImage(path, `${l.sizeMiB}M`, below ? { backing: below.name, backingFormat: below.format } : {});
          const size = l.sizeMiB * MiB;
          for (const w of l.writes) {
            const compressed = w.kind === "compressed";
            const off = compressed ? (w.cluster * 65536) % size : ((w.cluster * 65536 + w.sub * 4096) % size);
            const len = compressed ? 65536 : Math.min(w.len * 4096, size - off);
            if (len <= 0) continue;
            const cmd =
              w.kind === "data" ? `write -P ${w.byte} ${off} ${len}`
              : w.kind === "compressed" ? `write -c -P ${w.byte} ${off} ${len}`
              : w.kind === "zero" ? `write -z ${off} ${len}`
              : w.kind === "zero-unmap" ? `write -z -u ${off} ${len}`
              : `discard ${off} ${len}`;
            try {
              io(path, cmd);
            } catch (err) {
              // QEMU writes compressed clusters only where nothing is allocated yet (EIO otherwise): no write.
              if (!(compressed && /Input\/output error/.test(String((err as { stdout?: unknown }).stdout ?? err)))) throw err;
            }
          }
        }
        below = { name, format: i === 0 && rawBottom ? "raw" : "qcow2" };
        top = path;
      });
      if (top.endsWith(".raw")) return; // a lone raw file is no chain
      assertAgrees(top);
      const chain = openChain(top);
      try {
        assert.deepEqual(runsOfChain(chain), qemuChainMap(d, top));
        assert.equal(chain.layers.length, spec.length);
        assert.equal(chain.layers.at(-1)?.format, rawBottom ? "raw" : "qcow2");
      } finally {
        chain.close();
      }
    }),
    { numRuns: Number(process.env.VIGIL_FUZZ_RUNS ?? 25), ...(process.env.VIGIL_FUZZ_SEED === undefined ? {} : { seed: Number(process.env.VIGIL_FUZZ_SEED) }) },
  );
});

test("relative backing names resolve against the directory of the name the image was opened by, as QEMU does", (t) => {
  const dir = tempDir(t);
  for (const [sub, byte] of [["a", 0xaa], ["c", 0xcc]] as const) {
    mkdirSync(join(dir, sub));
    makeImage(join(dir, sub, "base.qcow2"), "1M", { io: [`write -P ${byte} 0 64k`] });
  }
  mkdirSync(join(dir, "b"));
  makeImage(join(dir, "b", "ov.qcow2"), "", { backing: "../a/base.qcow2" });
  makeImage(join(dir, "b", "top.qcow2"), "", { backing: "ov.qcow2" });
  io(join(dir, "b", "top.qcow2"), "write -P 0x11 128k 4k");
  // Opened from another working directory: the name is relative to b/, not to the process.
  const chain = open(t, join(dir, "b", "top.qcow2"));
  assert.deepEqual(chain.layers.map((l) => l.path), [join(dir, "b", "top.qcow2"), join(dir, "b", "ov.qcow2"), join(dir, "b", "../a/base.qcow2")]);
  assert.equal(chain.read(0n, 1)[0], 0xaa);
  assertAgrees(join(dir, "b", "top.qcow2"));
  // Through a symlink in c/, "base.qcow2" means c/base.qcow2 for QEMU (qemu-img info says so): same for vigil.
  makeImage(join(dir, "b", "near.qcow2"), "", { backing: "../a/base.qcow2" });
  tool("qemu-img", ["rebase", "-u", "-b", "base.qcow2", "-F", "qcow2", join(dir, "b", "near.qcow2")]);
  symlinkSync(join("..", "b", "near.qcow2"), join(dir, "c", "link.qcow2"));
  const viaLink = open(t, join(dir, "c", "link.qcow2"));
  assert.equal(viaLink.read(0n, 1)[0], 0xcc);
  assert.equal(viaLink.layers[0]?.realPath, join(dir, "b", "near.qcow2"));
  assertAgrees(join(dir, "c", "link.qcow2"));
});

test("loops are refused by device and inode, whatever the names", (t) => {
  const dir = tempDir(t);
  const a = makeImage(join(dir, "a.qcow2"), "1M");
  makeImage(join(dir, "b.qcow2"), "", { backing: "a.qcow2" });
  tool("qemu-img", ["rebase", "-u", "-b", "b.qcow2", "-F", "qcow2", a]);
  assertRefused(() => openChain(join(dir, "b.qcow2")), "loop", /backing chain loops/);
  const self = makeImage(join(dir, "self.qcow2"), "1M");
  tool("qemu-img", ["rebase", "-u", "-b", "self.qcow2", "-F", "qcow2", self]);
  assertRefused(() => openChain(self), "loop");
  // A hard link is another name for the same inode.
  const h = makeImage(join(dir, "h.qcow2"), "1M");
  linkSync(h, join(dir, "h-link.qcow2"));
  tool("qemu-img", ["rebase", "-u", "-b", "h-link.qcow2", "-F", "qcow2", h]);
  assertRefused(() => openChain(h), "loop", /inode/);
  // QEMU refuses it too.
  assert.throws(() => tool("qemu-img", ["info", "--backing-chain", join(dir, "b.qcow2")]));
});

test("depth is bounded: a chain one image deeper than the limit is refused", (t) => {
  const dir = tempDir(t);
  let prev = makeImage(join(dir, "0.qcow2"), "1M", { io: ["write -P 0x5a 0 4k"] });
  for (let i = 1; i < 17; i++) prev = makeImage(join(dir, `${i}.qcow2`), "", { backing: `${i - 1}.qcow2` });
  const ok = open(t, join(dir, "15.qcow2")); // 16 images: the default limit
  assert.equal(ok.layers.length, 16);
  assert.equal(ok.read(0n, 1)[0], 0x5a);
  assertRefused(() => openChain(prev), "depth", /deeper than 16/);
  assertRefused(() => openChain(join(dir, "5.qcow2"), { limits: { maxDepth: 5 } }), "depth");
});

test("missing backing files, protocol names, unknown or unrecorded formats are refused by name", (t) => {
  const dir = tempDir(t);
  const base = makeImage(join(dir, "base.qcow2"), "1M", { io: ["write -P 0x42 0 4k"] });
  const ov = makeImage(join(dir, "ov.qcow2"), "", { backing: "base.qcow2" });
  rmSync(base);
  assertRefused(() => openChain(ov), "missing", /no such file/);
  assert.throws(() => openChain(ov), (e: unknown) => e instanceof ChainError && e.code === "VIGIL_NOT_FOUND");
  assertRefused(() => openChain(join(dir, "nope.qcow2")), "missing");

  for (const name of ["json:{\"file.driver\":\"file\",\"file.filename\":\"/etc/passwd\"}", "nbd:127.0.0.1:10809", "file:base.qcow2"]) {
    const p = makeImage(join(dir, "proto.qcow2"), "1M");
    tool("qemu-img", ["rebase", "-u", "-b", name, "-F", "raw", p]);
    assertRefused(() => openChain(p), "backing-name", /protocol or pseudo-file/);
    rmSync(p);
  }

  tool("qemu-img", ["create", "-q", "-f", "vmdk", join(dir, "disk.vmdk"), "1M"]);
  const onVmdk = makeImage(join(dir, "on-vmdk.qcow2"), "", { backing: "disk.vmdk", backingFormat: "vmdk" });
  assertRefused(() => openChain(onVmdk), "backing-format", /"vmdk" is not supported/);

  // No recorded format: refused unless probing is asked for; then probed like QEMU (and QEMU agrees on the bytes).
  makeImage(join(dir, "base2.qcow2"), "1M", { io: ["write -P 0x42 0 4k"] });
  const noFmt = makeImage(join(dir, "nofmt.qcow2"), "", { backing: "base2.qcow2" });
  dropBackingFormat(noFmt);
  assertRefused(() => openChain(noFmt), "backing-format", /records no backing format/);
  const probed = open(t, noFmt, { probeBackingFormat: true });
  assert.deepEqual(probed.layers.map((l) => [l.format, l.formatProbed]), [["qcow2", false], ["qcow2", true]]);
  assertAgrees(noFmt, { probeBackingFormat: true });
  writeFileSync(join(dir, "base3.raw"), Buffer.alloc(1 << 20, 0x33));
  const noFmtRaw = makeImage(join(dir, "nofmt-raw.qcow2"), "1M", { backing: "base3.raw", backingFormat: "raw" });
  dropBackingFormat(noFmtRaw);
  const probedRaw = open(t, noFmtRaw, { probeBackingFormat: true });
  assert.deepEqual(probedRaw.layers.map((l) => l.format), ["qcow2", "raw"]);
  assertAgrees(noFmtRaw, { probeBackingFormat: true });
});

test("backing files outside the allowed roots are refused, also through a symlink inside them", (t) => {
  const dir = tempDir(t);
  mkdirSync(join(dir, "images"));
  mkdirSync(join(dir, "disks"));
  mkdirSync(join(dir, "elsewhere"));
  makeImage(join(dir, "images", "base.qcow2"), "1M");
  makeImage(join(dir, "elsewhere", "secret.qcow2"), "1M");
  const roots = [join(dir, "images"), join(dir, "disks")];
  const good = makeImage(join(dir, "disks", "vm.qcow2"), "", { backing: "../images/base.qcow2" });
  assert.equal(open(t, good, { roots }).layers.length, 2);
  const bad = makeImage(join(dir, "disks", "bad.qcow2"), "", { backing: "../elsewhere/secret.qcow2" });
  assertRefused(() => openChain(bad, { roots }), "outside-roots", /outside the allowed directories/);
  symlinkSync(join(dir, "elsewhere", "secret.qcow2"), join(dir, "images", "innocent.qcow2"));
  const sneaky = makeImage(join(dir, "disks", "sneaky.qcow2"), "", { backing: "../images/innocent.qcow2" });
  assertRefused(() => openChain(sneaky, { roots }), "outside-roots", /secret\.qcow2/);
  // The prefix of a root is not the root.
  mkdirSync(join(dir, "images-evil"));
  makeImage(join(dir, "images-evil", "x.qcow2"), "1M");
  const prefix = makeImage(join(dir, "disks", "prefix.qcow2"), "", { backing: "../images-evil/x.qcow2" });
  assertRefused(() => openChain(prefix, { roots }), "outside-roots");
  // A raw file posing as a qcow2 image (the probing attack): with probing allowed, its "backing file" is still
  // bound by the roots.
  const poser = makeImage(join(dir, "elsewhere", "poser.qcow2"), "1M", { backing: join(dir, "elsewhere", "secret.qcow2") });
  const rawDisk = join(dir, "images", "guest.raw");
  writeFileSync(rawDisk, readFileSync(poser));
  const onRaw = makeImage(join(dir, "disks", "on-raw.qcow2"), "1M", { backing: "../images/guest.raw", backingFormat: "raw" });
  assert.equal(open(t, onRaw, { roots }).layers[1]?.format, "raw"); // recorded format: never probed
  dropBackingFormat(onRaw);
  assertRefused(() => openChain(onRaw, { roots }), "backing-format");
  assertRefused(() => openChain(onRaw, { roots, probeBackingFormat: true }), "outside-roots");
});

test("absurd virtual sizes are refused at open", (t) => {
  const dir = tempDir(t);
  const huge = makeImage(join(dir, "huge.qcow2"), "20T");
  assertRefused(() => openChain(huge), "virtual-size", /above the limit/);
  const small = makeImage(join(dir, "small.qcow2"), "64M");
  const ov = makeImage(join(dir, "ov.qcow2"), "20T", { backing: "small.qcow2" });
  assertRefused(() => openChain(ov), "virtual-size");
  assertRefused(() => openChain(small, { limits: { maxVirtualSize: 1n << 20n } }), "virtual-size");
  // An overlay larger than its backing file is legitimate (QEMU reads zeros past the backing's end).
  const big = makeImage(join(dir, "big.qcow2"), "128M", { backing: "small.qcow2" });
  io(big, "write -P 0x77 100M 4k");
  assertAgrees(big);
});

/** The L1 table offset and the L2 table offsets of an image's active view. */
function tables(bytes: Buffer): { l1: number; l2: number[] } {
  const img = Qcow2Image.fromBytes("x", bytes);
  const l1 = Number(img.header.l1TableOffset);
  const l2: number[] = [];
  for (let i = 0; i < img.header.l1Size; i++) l2.push(Number(bytes.readBigUInt64BE(l1 + i * 8) & 0x00ff_ffff_ffff_fe00n));
  img.close();
  return { l1, l2 };
}

test("an L1 table mapping one L2 table twice is refused at open", (t) => {
  const dir = tempDir(t);
  const p = makeImage(join(dir, "shared.qcow2"), "2G", { io: ["write -P 0x1 0 64k", "write -P 0x2 1G 64k"] });
  const bytes = readFileSync(p);
  const { l1, l2 } = tables(bytes);
  assert.ok(l2[0] && l2[2]);
  // Every L1 entry points at the first L2 table: a walk would visit its 8192 entries four times.
  for (let i = 0; i < 4; i++) bytes.writeBigUInt64BE(BigInt(l2[0]!) | (1n << 63n), l1 + i * 8);
  writeFileSync(p, bytes);
  assertRefused(() => openChain(p), "shared-table", /map the same L2 table/);
});

test("compressed-cluster bombs are refused at open, and reads stay within the inflate budget", (t) => {
  const dir = tempDir(t);
  // One real compressed cluster, then every entry of its L2 table pointed at the same stream: 8192 clusters of
  // work from one 64 KiB stream, behind an 8 MiB cache.
  const p = makeImage(join(dir, "bomb.qcow2"), "512M", { io: ["write -c -P 0x61 0 64k"] });
  const bytes = readFileSync(p);
  const { l2 } = tables(bytes);
  const entry = bytes.readBigUInt64BE(l2[0]!);
  assert.ok((entry & (1n << 62n)) !== 0n, "compressed entry");
  for (let i = 1; i < 8192; i++) bytes.writeBigUInt64BE(entry, l2[0]! + i * 8);
  writeFileSync(p, bytes);
  assertRefused(() => openChain(p), "compressed-bomb", /mapped twice/);

  // Honest compressed clusters: reading them is within budget, re-reading them without a cache is not, forever.
  makeImage(join(dir, "honest.qcow2"), "1M", { io: ["write -c -P 0x61 0 64k", "write -c -P 0x62 64k 64k", "write -c -P 0x63 128k 64k"] });
  const ov = makeImage(join(dir, "ov.qcow2"), "", { backing: "honest.qcow2", io: ["write -c -P 0x64 192k 64k"] });
  const chain = open(t, ov, { limits: { qcow2: { cacheBytes: 0 } } });
  assert.deepEqual(chain.layers.map((l) => l.compressedClusters), [1, 3]);
  assert.deepEqual(chain.inflated, { spent: 0, limit: 4 * 4 * 65536 });
  for (let pass = 0; pass < 4; pass++) assert.equal(chain.read(0n, 256 << 10)[200 << 10], 0x64);
  assert.throws(
    () => chain.read(0n, 256 << 10),
    (e: unknown) => e instanceof ChainError && e.reason === "inflate-budget" && /inflate budget of 1048576 bytes is spent/.test(e.message),
  );
  const fixed = open(t, ov, { limits: { maxInflatedBytes: 65536 } });
  assert.equal(fixed.read(0n, 4096)[0], 0x61);
  assert.throws(() => fixed.read(65536n, 4096), (e: unknown) => e instanceof ChainError && e.reason === "inflate-budget");
});

test("nothing stays open after a refused chain", (t) => {
  const dir = tempDir(t);
  makeImage(join(dir, "a.qcow2"), "1M");
  makeImage(join(dir, "b.qcow2"), "", { backing: "a.qcow2" });
  const c = makeImage(join(dir, "c.qcow2"), "", { backing: "b.qcow2" });
  rmSync(join(dir, "a.qcow2"));
  const fds = () => new Set(readdirSync("/proc/self/fd"));
  const before = fds();
  for (let i = 0; i < 5; i++) assert.throws(() => openChain(c));
  // A malformed layer: the qcow2 reader closes the descriptor it was handed, and nothing closes it twice.
  makeImage(join(dir, "a.qcow2"), "1M");
  const bad = readFileSync(join(dir, "b.qcow2"));
  bad[0] = 0;
  writeFileSync(join(dir, "b.qcow2"), bad);
  for (let i = 0; i < 5; i++) assert.throws(() => openChain(c), (e: unknown) => e instanceof Qcow2Error && /no qcow2 magic/.test(e.message));
  assert.deepEqual([...fds()].filter((fd) => !before.has(fd)), []);
});

test("fuzz: mutated overlay headers and backing names give a VigilError or a readable chain inside the roots, quickly", (t) => {
  const dir = tempDir(t);
  const d = join(dir, "root");
  mkdirSync(d);
  makeImage(join(d, "base.qcow2"), "2M", { io: ["write -P 0x21 0 64k", "write -c -P 0x22 64k 64k"] });
  makeImage(join(d, "mid.qcow2"), "", { backing: "base.qcow2", io: ["write -P 0x23 128k 64k"] });
  const top = makeImage(join(d, "top.qcow2"), "", { backing: "mid.qcow2", io: ["write -P 0x24 192k 4k"] });
  const seed = readFileSync(top);
  const img = Qcow2Image.fromBytes("seed", seed);
  const nameOff = seed.readUInt32BE(12) === 0 ? 0 : Number(seed.readBigUInt64BE(8));
  const extStart = img.header.headerLength;
  img.close();
  const target = join(d, "fuzz.qcow2");
  fc.assert(
    fc.property(
      fc.array(
        fc.record({
          where: fc.constantFrom("header", "extensions", "name"),
          at: fc.nat(),
          value: fc.oneof(fc.integer({ min: 0, max: 255 }), fc.constantFrom(0x2e, 0x2f, 0x3a, 0x00, 0xff)),
        }),
        { minLength: 1, maxLength: 6 },
      ),
      (edits) => {
        const bytes = Buffer.from(seed);
        for (const e of edits) {
          const pos = e.where === "header" ? e.at % 104 : e.where === "extensions" ? extStart + (e.at % 64) : nameOff + (e.at % 9);
          bytes[pos] = e.value;
        }
        writeFileSync(target, bytes);
        const t0 = performance.now();
        try {
          const chain = openChain(target, { roots: [d] });
          try {
            for (const l of chain.layers) assert.ok(l.realPath === target || l.realPath.startsWith(d + "/"), `layer ${l.realPath} inside the root`);
            chain.read(0n, Number(chain.virtualSize < 1n << 20n ? chain.virtualSize : 1n << 20n));
          } finally {
            chain.close();
          }
        } catch (err) {
          assert.ok(err instanceof VigilError, `unexpected ${String(err)}`);
        }
        assert.ok(performance.now() - t0 < 500, "bounded time");
      },
    ),
    { numRuns: Number(process.env.VIGIL_FUZZ_RUNS ?? 300) },
  );
});

test("a backing layer whose L2 entry points past the end of its file is refused at open, before any read", (t) => {
  const dir = tempDir(t);
  const base = makeImage(join(dir, "base.qcow2"), "4M", { io: ["write -P 0x31 0 64k", "write -P 0x32 1M 64k"] });
  const top = makeImage(join(dir, "top.qcow2"), "", { backing: "base.qcow2", io: ["write -P 0x33 2M 4k"] });
  const bytes = readFileSync(base);
  const { l2 } = tables(bytes);
  // Entry 16 maps guest offset 1 MiB; move its cluster far past the end of the file (keeping the COPIED bit).
  bytes.writeBigUInt64BE((1n << 63n) | (1n << 40n), l2[0]! + 16 * 8);
  writeFileSync(base, bytes);
  const t0 = performance.now();
  assert.throws(
    () => openChain(top),
    (e: unknown) => e instanceof Qcow2Error && e.reason === "malformed" && /base\.qcow2.*lies outside the file/.test(e.message),
  );
  assert.ok(performance.now() - t0 < 100);
});

test("a backing name leading to a FIFO or a device is refused at once, never waited on", (t) => {
  const dir = tempDir(t);
  execFileSync("mkfifo", [join(dir, "fifo")]);
  const onFifo = makeImage(join(dir, "on-fifo.qcow2"), "1M");
  tool("qemu-img", ["rebase", "-u", "-b", "fifo", "-F", "raw", onFifo]);
  const t0 = performance.now();
  assert.throws(() => openChain(onFifo), (e: unknown) => e instanceof VigilError && /not a regular file/.test(e.message));
  assert.ok(performance.now() - t0 < 100);
  const onDev = makeImage(join(dir, "on-dev.qcow2"), "1M");
  tool("qemu-img", ["rebase", "-u", "-b", "/dev/zero", "-F", "raw", onDev]);
  assert.throws(() => openChain(onDev), (e: unknown) => e instanceof VigilError && /not a regular file/.test(e.message));
  // With roots, a device outside them is refused by name, before it is opened.
  assertRefused(() => openChain(onDev, { roots: [dir] }), "outside-roots", /"\/dev\/zero"/);
});

test("the top image's format is the caller's: raw when asked, never probed", (t) => {
  const dir = tempDir(t);
  const raw = join(dir, "disk.raw");
  writeFileSync(raw, Buffer.alloc(1 << 20, 0x44));
  const chain = open(t, raw, { format: "raw" });
  assert.deepEqual(chain.layers.map((l) => [l.format, l.formatProbed]), [["raw", false]]);
  assert.deepEqual(runsOfChain(chain), [{ start: 0, length: 1 << 20, depth: 0, kind: "data" }]);
  assert.equal(chain.read(4095n, 1)[0], 0x44);
  // A raw file opened as the default qcow2 is refused by the qcow2 reader, even if its bytes look like qcow2 to a prober.
  assert.throws(() => openChain(raw), (e: unknown) => e instanceof Qcow2Error && /no qcow2 magic/.test(e.message));
  const posing = makeImage(join(dir, "posing.qcow2"), "1M", { io: ["write -P 0x45 0 4k"] });
  const asRaw = open(t, posing, { format: "raw" });
  assert.equal(asRaw.layers.length, 1, "a raw image's qcow2-looking header names no backing file to vigil");
  assert.equal(asRaw.read(0n, 4).readUInt32BE(0), 0x514649fb);
});
