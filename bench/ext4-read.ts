/**
 * The ext4 reader's file throughput: every regular file of a ~300 MB ext4 image (made by mke2fs -d, never
 * mounted) read through `Ext4.chunks` over a raw image, against `cat`-ing the raw image's bytes to /dev/null in
 * the same run; and the same with SHA-256 on both sides (what a scanner does) against `sha256sum` of the image.
 * `npm run bench -- ext4-read [ROUNDS] [CHUNK_BYTES]`. Rounds alternate, the page cache is warm for both. Throughput is bytes delivered per second: the files' bytes
 * for the reader, the image's bytes for the baseline.
 */
import { spawnSync } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { mkdirSync, mkdtempSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Ext4 } from "../src/guestfs/ext4/index.ts";
import { RawImage } from "../src/storage/block-reader.ts";
import { report } from "./lib.ts";

let CHUNK = 1 << 20;
function readAll(img: string, hash: boolean): number {
  const raw = RawImage.open(img);
  try {
    const fs = Ext4.open(raw);
    let bytes = 0;
    fs.walk("/", (e) => {
      if (e.type !== "file") return;
      const h = hash ? createHash("sha256") : undefined;
      for (const c of fs.chunks(e.ino, { maxBytes: 1 << 30, chunkBytes: CHUNK })) {
        bytes += c.length;
        h?.update(c);
      }
      h?.digest();
    });
    return bytes;
  } finally {
    raw.close();
  }
}

/** The BlockReader's own ceiling: the whole raw image through `RawImage.read` in chunks of CHUNK bytes. */
function readRaw(img: string): void {
  const raw = RawImage.open(img);
  try {
    for (let off = 0n; off < raw.virtualSize; off += BigInt(CHUNK)) {
      const n = Number(raw.virtualSize - off < BigInt(CHUNK) ? raw.virtualSize - off : BigInt(CHUNK));
      raw.read(off, n);
    }
  } finally {
    raw.close();
  }
}

function timed(f: () => void): number {
  const t0 = process.hrtime.bigint();
  f();
  return Number(process.hrtime.bigint() - t0) / 1e9;
}

export async function run(args: string[]): Promise<void> {
  const rounds = Number(args[0] ?? 5);
  CHUNK = Number(args[1] ?? CHUNK);
  const dir = mkdtempSync(join(tmpdir(), "vigil-bench-ext4-"));
  try {
    const src = join(dir, "src");
    mkdirSync(join(src, "small"), { recursive: true });
    for (let i = 0; i < 200; i++) writeFileSync(join(src, `f${i}.bin`), randomBytes(1024 * 1024));
    for (let i = 0; i < 2000; i++) writeFileSync(join(src, "small", `s${i}`), randomBytes(4096));
    writeFileSync(join(src, "large.bin"), randomBytes(64 * 1024 * 1024));
    const img = join(dir, "bench.img");
    const mk = spawnSync("mke2fs", ["-q", "-F", "-t", "ext4", "-d", src, img, "400M"], { encoding: "utf8" });
    if (mk.status !== 0) throw new Error(`mke2fs: ${mk.stderr}`);
    rmSync(src, { recursive: true });
    const imageBytes = statSync(img).size;
    const fileBytes = readAll(img, false); // also warms the page cache
    spawnSync("sh", ["-c", `cat "${img}" > /dev/null`]);
    process.stdout.write(`ext4 read benchmark: ${(fileBytes / 1e6).toFixed(0)} MB of files in a ${(imageBytes / 1e6).toFixed(0)} MB image, ${rounds} rounds; node ${process.version}\n`);
    const sh = (cmd: string): void => {
      const r = spawnSync("sh", ["-c", cmd], { stdio: "ignore" });
      if (r.status !== 0) throw new Error(`${cmd} failed`);
    };
    const cat: number[] = [];
    const ours: number[] = [];
    const sum: number[] = [];
    const oursHash: number[] = [];
    const rawReads: number[] = [];
    for (let r = 0; r < rounds; r++) {
      cat.push(imageBytes / 1e6 / timed(() => sh(`cat "${img}" > /dev/null`)));
      ours.push(fileBytes / 1e6 / timed(() => readAll(img, false)));
      sum.push(imageBytes / 1e6 / timed(() => sh(`sha256sum "${img}" > /dev/null`)));
      oursHash.push(fileBytes / 1e6 / timed(() => readAll(img, true)));
      rawReads.push(imageBytes / 1e6 / timed(() => readRaw(img)));
    }
    report("read: throughput", "MB/s", { label: "cat raw image > /dev/null", values: cat }, { label: "Ext4.chunks, every file", values: ours });
    report("read: the ext4 layer's cost over its BlockReader", "MB/s", { label: "RawImage.read, whole image", values: rawReads }, { label: "Ext4.chunks, every file", values: ours });
    report("read + SHA-256: throughput", "MB/s", { label: "sha256sum raw image", values: sum }, { label: "Ext4.chunks + sha256, every file", values: oursHash });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
