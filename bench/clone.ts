/**
 * Linked clones: N clones of a template through the API (one request each: authorization, audit record,
 * inventory rows, a fresh identity), against N plain `qemu-img create -b TEMPLATE` in the same run.
 * Goal: 100 clones < 3 s total (anchor: VMware instant clone, 64 VMs < 6 s).
 */
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { benchDaemon, machineLine, report } from "./lib.ts";

export async function run(args: string[]): Promise<void> {
  const n = Number(args[0] ?? 100);
  const rounds = Number(args[1] ?? 3);
  const d = await benchDaemon();
  const scratch = mkdtempSync(join(tmpdir(), "vigil-bench-clone-"));
  try {
    const host = await d.api<{ accelerator: string }>("GET", "/v1/host");
    process.stdout.write(`clone benchmark: ${n} linked clones × ${rounds} rounds; ${machineLine(host.accelerator)}\n`);
    const tpl = await d.api<{ paths: { disks: Record<string, string> } }>("POST", "/v1/vms", { name: "tpl", memoryMiB: 128 });
    await d.api("POST", "/v1/vms/tpl/template", {});
    const base = tpl.paths.disks.root!;
    const raw: number[] = [];
    const vigil: number[] = [];
    for (let r = 0; r < rounds; r++) {
      let t0 = performance.now();
      for (let i = 0; i < n; i++) {
        const res = spawnSync("qemu-img", ["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", base, join(scratch, `r${r}-${i}.qcow2`)]);
        if (res.status !== 0) throw new Error(res.stderr.toString());
      }
      raw.push(performance.now() - t0);
      t0 = performance.now();
      for (let i = 0; i < n; i++) await d.api("POST", "/v1/vms/tpl/clone", { name: `c${r}-${i}` });
      vigil.push(performance.now() - t0);
      process.stderr.write(`  round ${r + 1}: qemu-img ${raw.at(-1)!.toFixed(0)} ms, vigil ${vigil.at(-1)!.toFixed(0)} ms\n`);
    }
    report(`${n} linked clones (total time)`, "ms", { label: `${n} × qemu-img create -b template`, values: raw }, { label: `${n} × POST /v1/vms/tpl/clone (API)`, values: vigil }, `< 3000 ms for 100`);
  } finally {
    rmSync(scratch, { recursive: true, force: true });
    await d.close();
  }
}
