/**
 * Export/import throughput: a VM whose data disk holds 256 MiB of mixed content (program files, zeros, random
 * bytes). vigil: `vigil vm export -o FILE` and `vigil vm import FILE` (CLI, end to end: hashing, zstd,
 * signing, streaming, verifying). Baseline in the same run: `qemu-img convert` of every disk layer plus `tar`
 * (export) and `tar -x` plus `qemu-img convert` (import) of the same disks. Rates are disk-file bytes per
 * second. Goal: vigil ≥ 0.8 × the baseline's rate.
 */
import { spawnSync } from "node:child_process";
import { closeSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync, statSync, writeSync } from "node:fs";
import { randomBytes } from "node:crypto";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { benchDaemon, machineLine, median, report } from "./lib.ts";

function sh(file: string, args: string[], cwd?: string): void {
  const r = spawnSync(file, args, { cwd, stdio: ["ignore", "ignore", "pipe"] });
  if (r.status !== 0) throw new Error(`${file} ${args.join(" ")}: ${r.stderr.toString()}`);
}

/** 256 MiB: half real program bytes (compressible like a system disk), a quarter zeros, a quarter random. */
function fillFile(path: string): void {
  const fd = openSync(path, "w");
  const mib = 1024 * 1024;
  const files = readdirSync("/usr/bin").map((f) => join("/usr/bin", f)).filter((f) => statSync(f).isFile());
  let written = 0;
  for (const f of files) {
    if (written >= 128 * mib) break;
    const data = readFileSync(f);
    writeSync(fd, data, 0, Math.min(data.length, 128 * mib - written));
    written += Math.min(data.length, 128 * mib - written);
  }
  writeSync(fd, Buffer.alloc(128 * mib - written), 0);
  writeSync(fd, Buffer.alloc(64 * mib));
  for (let i = 0; i < 64; i++) writeSync(fd, randomBytes(mib));
  closeSync(fd);
}

export async function run(args: string[]): Promise<void> {
  const rounds = Number(args[0] ?? 3);
  const d = await benchDaemon();
  const scratch = mkdtempSync(join(tmpdir(), "vigil-bench-bundle-"));
  try {
    const host = await d.api<{ accelerator: string }>("GET", "/v1/host");
    process.stdout.write(`bundle benchmark, ${rounds} rounds, 256 MiB of data; ${machineLine(host.accelerator)}\n`);
    const vm = await d.api<{ paths: { disks: Record<string, string> } }>("POST", "/v1/vms", { name: "big", memoryMiB: 128, disks: [{ name: "data", sizeMiB: 256 }] });
    const fill = join(scratch, "fill.raw");
    fillFile(fill);
    sh("qemu-img", ["convert", "-f", "raw", "-O", "qcow2", fill, vm.paths.disks.data!]);
    rmSync(fill);
    const chain = (disk: string) => (JSON.parse(spawnSync("qemu-img", ["info", "-U", "--backing-chain", "--output=json", disk], { encoding: "utf8" }).stdout) as Array<{ filename: string }>).map((c) => c.filename);
    const layers = Object.values(vm.paths.disks).flatMap(chain);
    const bytes = layers.reduce((n, f) => n + statSync(f).size, 0);
    const exp = { raw: [] as number[], vigil: [] as number[] };
    const imp = { raw: [] as number[], vigil: [] as number[] };
    for (let r = 0; r < rounds; r++) {
      const dir = join(scratch, `r${r}`);
      sh("mkdir", ["-p", join(dir, "flat"), join(dir, "out")]);
      let t0 = performance.now();
      layers.forEach((f, i) => sh("qemu-img", ["convert", "-O", "qcow2", f, join(dir, "flat", `${i}.qcow2`)]));
      sh("tar", ["-cf", join(dir, "base.tar"), "-C", join(dir, "flat"), "."]);
      exp.raw.push(performance.now() - t0);
      t0 = performance.now();
      const e = d.cli(["vm", "export", "big", "-o", join(dir, "big.vigil")]);
      exp.vigil.push(performance.now() - t0);
      if (e.status !== 0) throw new Error(e.stderr);
      t0 = performance.now();
      sh("tar", ["-xf", join(dir, "base.tar"), "-C", join(dir, "out")]);
      for (const f of readdirSync(join(dir, "out")).filter((x) => x.endsWith(".qcow2"))) sh("qemu-img", ["convert", "-O", "qcow2", join(dir, "out", f), join(dir, "out", `${f}.imported`)]);
      imp.raw.push(performance.now() - t0);
      t0 = performance.now();
      const i = d.cli(["vm", "import", join(dir, "big.vigil"), "--name", `imp${r}`]);
      imp.vigil.push(performance.now() - t0);
      if (i.status !== 0) throw new Error(i.stderr);
      process.stderr.write(`  round ${r + 1}: export raw ${exp.raw.at(-1)!.toFixed(0)} / vigil ${exp.vigil.at(-1)!.toFixed(0)} ms; import raw ${imp.raw.at(-1)!.toFixed(0)} / vigil ${imp.vigil.at(-1)!.toFixed(0)} ms; bundle ${(statSync(join(dir, "big.vigil")).size / 1048576).toFixed(1)} MiB vs tar ${(statSync(join(dir, "base.tar")).size / 1048576).toFixed(1)} MiB\n`);
      rmSync(dir, { recursive: true, force: true });
    }
    const rate = (ms: number[]) => ms.map((x) => bytes / 1048576 / (x / 1000));
    process.stdout.write(`\ndisk files: ${(bytes / 1048576).toFixed(1)} MiB in ${layers.length} layers\n`);
    report("export rate (MiB/s of disk files; higher is better)", "MiB/s", { label: "qemu-img convert + tar", values: rate(exp.raw) }, { label: "vigil vm export (CLI)", values: rate(exp.vigil) }, "≥ 0.8");
    report("import rate (MiB/s of disk files; higher is better)", "MiB/s", { label: "tar -x + qemu-img convert", values: rate(imp.raw) }, { label: "vigil vm import (CLI)", values: rate(imp.vigil) }, "≥ 0.8");
    void median;
  } finally {
    rmSync(scratch, { recursive: true, force: true });
    await d.close();
  }
}
