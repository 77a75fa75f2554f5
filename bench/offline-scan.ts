/**
 * The offline scan of the dormant Debian disk set-up builds (docs/transience.md), against reading the same image
 * with `qemu-img convert -O raw` (to a tmpfs file: qemu-img cannot write raw to /dev/null) in the same run (rounds alternate; the page cache is warm for both).
 * `npm run bench -- offline-scan [ROUNDS]`.
 * - packages + advisories: opening the chain, partition and ext4, reading the dpkg status and os-release, loading
 *   the security index from /var/lib/apt/lists and computing the pending updates. Goal ≤ 1 s.
 * - signature scan throughput: the files' bytes scanned per second (YARA-X, one small rule set) against the image's
 *   virtual bytes qemu-img delivers per second. Goal ≥ 0.5×.
 */
import { spawnSync } from "node:child_process";
import { rmSync } from "node:fs";
import { dormantFixture } from "../src/storage/testing/debian-dormant.ts";
import { loadAdvisories } from "../src/posture/advisories.ts";
import { scanDormant } from "../src/posture/offline-scan.ts";
import { pendingUpdates } from "../src/posture/pending.ts";
import { compileRules, DEFAULT_SCAN_LIMITS } from "../src/posture/signature-scan.ts";
import { machineLine, median, report } from "./lib.ts";

const seconds = (t0: bigint) => Number(process.hrtime.bigint() - t0) / 1e9;

export async function run(args: string[]): Promise<void> {
  const rounds = Number(args[0] ?? 5);
  const f = dormantFixture();
  const rules = compileRules(`rule planted { strings: $m = "${f.marker.replace(/["\\]/g, "\\$&")}" condition: $m }
rule elf_upx { strings: $u = "UPX!" condition: uint32(0) == 0x464c457f and $u }`);
  const none = compileRules("");
  const virtualBytes = f.manifest.disk.bytes;
  const pkgMs: number[] = [];
  const scanBps: number[] = [];
  const rawBps: number[] = [];
  let pending = 0;
  let files = 0;
  for (let i = 0; i < rounds; i++) {
    // Packages + advisories (no signature rules: that part is measured on its own below).
    let t0 = process.hrtime.bigint();
    const adv = await loadAdvisories("/var/lib/apt/lists");
    const r = scanDormant({ disks: [{ name: "root", path: f.overlay }], roots: [f.dir], rules: none, signatureLimits: { ...DEFAULT_SCAN_LIMITS, maxFiles: 1 } });
    pending = pendingUpdates(r.installed, adv.index, adv.tracker).length;
    pkgMs.push(seconds(t0) * 1000);
    // Signature scan of every file.
    t0 = process.hrtime.bigint();
    const s = scanDormant({ disks: [{ name: "root", path: f.overlay }], roots: [f.dir], rules, signatureLimits: DEFAULT_SCAN_LIMITS });
    const st = seconds(t0);
    files = s.signatures!.scannedFiles;
    scanBps.push(s.signatures!.scannedBytes / st / 1e6);
    // The baseline: qemu-img reads the same chain.
    t0 = process.hrtime.bigint();
    // (qemu-img cannot write a raw image to /dev/null, "Cannot grow device files": a tmpfs file instead, removed.)
    const out = `/dev/shm/vigil-bench-raw-${process.pid}`;
    const q = spawnSync("qemu-img", ["convert", "-O", "raw", f.overlay, out]);
    rmSync(out, { force: true });
    if (q.status !== 0) throw new Error(`qemu-img convert failed: ${q.stderr}`);
    rawBps.push(virtualBytes / seconds(t0) / 1e6);
  }
  process.stdout.write(`offline scan benchmark: ${rounds} rounds; the dormant Debian disk (${f.manifest.packages} packages, ${files} files, ${(virtualBytes / 2 ** 20).toFixed(0)} MiB virtual, 2 layers); ${machineLine("none (no guest)")}\n`);
  process.stdout.write(`\n## packages + advisories\n  median ${median(pkgMs).toFixed(0)} ms (n=${pkgMs.length}: ${pkgMs.map((v) => v.toFixed(0)).join(", ")}); ${pending} pending security updates; goal ≤ 1000 ms\n`);
  report("signature scan throughput", "MB/s", { label: "qemu-img convert -O raw → tmpfs (virtual bytes)", values: rawBps }, { label: "vigil: every file through chain/GPT/ext4 + YARA-X", values: scanBps }, "≥ 0.5× of the raw read");
}
