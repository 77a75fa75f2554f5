/**
 * Developer check of the introspection core against a real running VM (to become an integration test): reads the
 * RAM layout and control registers over QMP, builds the kernel model from the RAM file, prints its summary and
 * timings, and checks every kallsyms symbol against the packaged System.map plus the KASLR shift. Optionally
 * compares with a vmlinux (.BTF from the file vs BTF from guest memory) and with lines sampled from the guest's
 * /proc/kallsyms.
 *
 *   node --import tsx src/introspection/dev-check.ts --ram DIR/ram --qmp DIR/qmp.sock --system-map System.map-...
 *        [--vmlinux vmlinux] [--kallsyms-sample lines.txt] [--runs 7]
 *
 * Exit status 0 when every check passes, 1 otherwise. Output is one JSON document on stdout.
 */
import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { QmpClient } from "../qemu/qmp-client.ts";
import { Btf } from "./btf.ts";
import { readElfSectionFromFile } from "./elf.ts";
import { buildKernelModel, START_KERNEL_MAP, summarizeModel, type KernelModelCache } from "./kernel-model.ts";
import { parseControlRegisters } from "./page-walk.ts";
import { FilePhysicalMemory, parseMtreeFlat, ramRegionsFromMtree } from "./physical-memory.ts";
import { scanVmcoreinfo } from "./vmcoreinfo.ts";

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return Math.round((s[Math.floor(s.length / 2)] ?? NaN) * 100) / 100;
}

function timeRuns(runs: number, f: () => void): { medianMs: number; minMs: number; runs: number } {
  const ts: number[] = [];
  for (let i = 0; i < runs; i++) {
    const t0 = performance.now();
    f();
    ts.push(performance.now() - t0);
  }
  return { medianMs: median(ts), minMs: Math.round(Math.min(...ts) * 100) / 100, runs };
}

/** System.map lines "ffffffff81000000 T _stext" → entries. */
function readSystemMap(path: string): { name: string; type: string; address: bigint }[] {
  const out: { name: string; type: string; address: bigint }[] = [];
  for (const line of readFileSync(path, "latin1").split("\n")) {
    const m = /^([0-9a-f]{16}) (\w) (\S+)$/.exec(line);
    if (m) out.push({ address: BigInt("0x" + m[1]), type: m[2] as string, name: m[3] as string });
  }
  return out;
}

async function main(): Promise<number> {
  const { values } = parseArgs({
    options: {
      ram: { type: "string" },
      qmp: { type: "string" },
      "system-map": { type: "string" },
      vmlinux: { type: "string" },
      "kallsyms-sample": { type: "string" },
      runs: { type: "string", default: "7" },
    },
  });
  if (!values.ram || !values.qmp || !values["system-map"]) {
    process.stderr.write("usage: dev-check.ts --ram PATH --qmp PATH --system-map PATH [--vmlinux PATH] [--kallsyms-sample PATH] [--runs N]\n");
    return 2;
  }
  const runs = Math.max(1, Math.min(50, Number(values.runs)));
  const failures: string[] = [];

  const qmp = await QmpClient.connect(values.qmp);
  let mtree: string;
  let registers: string;
  const tq = performance.now();
  try {
    mtree = await qmp.hmp("info mtree -f");
    registers = await qmp.hmp("info registers");
  } finally {
    await qmp.close();
  }
  const qmpMs = performance.now() - tq;
  const regions = ramRegionsFromMtree(parseMtreeFlat(mtree));
  const cpu0 = parseControlRegisters(registers)[0];
  if (!cpu0) throw new Error("no CPU in info registers");
  const mem = FilePhysicalMemory.open(values.ram, regions);
  try {
    const scanAligned = timeRuns(runs, () => scanVmcoreinfo(mem));
    const scanAnywhere = timeRuns(Math.min(runs, 3), () => scanVmcoreinfo(mem, { mode: "anywhere" }));
    const options = { cr3: cpu0.cr3, cr4: cpu0.cr4 };
    const cold = timeRuns(runs, () => {
      mem.clearCache();
      buildKernelModel(mem, { ...options, cache: new Map() });
    });
    const cache: KernelModelCache = new Map();
    const model = buildKernelModel(mem, { ...options, cache, independentCarve: true });
    const warmScan = timeRuns(runs, () => {
      mem.clearCache();
      buildKernelModel(mem, { ...options, cache });
    });
    const hint = model.vmcoreinfoAt;
    const warmHint = timeRuns(runs, () => {
      mem.clearCache();
      buildKernelModel(mem, hint === undefined ? { ...options, cache } : { ...options, cache, vmcoreinfoHint: hint });
    });
    for (const d of model.disagreements) if (d.severity !== "info") failures.push(`disagreement ${d.check}: ${d.message}`);

    // Every System.map symbol: per-CPU (below __START_KERNEL_map) are absolute, the rest move by the shift.
    const map = readSystemMap(values["system-map"]);
    let matched = 0;
    const mismatched: string[] = [];
    const notInKallsyms: string[] = [];
    for (const s of map) {
      const want = s.address < START_KERNEL_MAP ? s.address : s.address + model.kaslrShift;
      const got = model.symbols.lookupAll(s.name);
      if (got.length === 0) notInKallsyms.push(`${s.type} ${s.name}`);
      else if (got.some((g) => g.address === want)) matched++;
      else mismatched.push(`${s.name}: map+shift ${want.toString(16)}, kallsyms ${got.map((g) => g.address.toString(16)).join(",")}`);
    }
    if (mismatched.length > 0) failures.push(`${mismatched.length} System.map symbols disagree with kallsyms`);
    // Symbols the linker marks absolute (A) are not in kallsyms; anything else missing is a failure.
    const unexpectedMissing = notInKallsyms.filter((x) => !x.startsWith("A "));
    if (unexpectedMissing.length > 0) failures.push(`${unexpectedMissing.length} System.map symbols missing from kallsyms`);

    let sample: { checked: number; mismatched: string[] } | undefined;
    if (values["kallsyms-sample"]) {
      const bad: string[] = [];
      let checked = 0;
      for (const line of readFileSync(values["kallsyms-sample"], "latin1").split("\n")) {
        const m = /^([0-9a-f]{16}) (\w) (\S+)$/.exec(line.trim());
        if (!m) continue;
        checked++;
        const addr = BigInt("0x" + m[1]);
        if (!model.symbols.lookupAll(m[3] as string).some((s) => s.address === addr && s.type === m[2])) bad.push(line.trim());
      }
      sample = { checked, mismatched: bad };
      if (bad.length > 0) failures.push(`${bad.length} /proc/kallsyms lines disagree`);
    }

    let btfFile: Record<string, unknown> | undefined;
    if (values.vmlinux) {
      const section = readElfSectionFromFile(values.vmlinux, ".BTF");
      const start = model.symbols.address("__start_BTF");
      const stop = model.symbols.address("__stop_BTF");
      const inMemory = start !== undefined && stop !== undefined ? model.kernel.read(start, Number(stop - start)) : undefined;
      const same = section !== undefined && inMemory !== undefined && section.equals(inMemory);
      if (!same) failures.push("BTF in guest memory differs from the vmlinux .BTF section");
      const fileBtf = section ? Btf.parse(section) : undefined;
      const offsets: Record<string, number | string> = {};
      for (const key of ["task_struct.tasks", "task_struct.pid", "task_struct.tgid", "task_struct.comm", "task_struct.mm", "task_struct.real_parent", "task_struct.cred", "mm_struct.pgd", "module.list", "module.name"]) {
        const [s, m] = key.split(".") as [string, string];
        offsets[key] = model.btf?.structMemberOffset(s, m) ?? "no BTF";
        if (fileBtf && fileBtf.structMemberOffset(s, m) !== offsets[key]) failures.push(`${key} differs between file and memory BTF`);
      }
      btfFile = { sectionBytes: section?.length, identicalToMemory: same, offsets };
    }

    const report = {
      model: summarizeModel(model),
      regions: regions.map((r) => ({ start: r.start.toString(16), end: r.end.toString(16), fileOffset: r.fileOffset.toString(16), readOnly: r.readOnly })),
      registers: { cr3: cpu0.cr3.toString(16), cr4: cpu0.cr4.toString(16) },
      systemMap: { entries: map.length, matched, mismatched: mismatched.slice(0, 20), notInKallsyms: notInKallsyms.slice(0, 20), notInKallsymsCount: notInKallsyms.length },
      kallsymsSample: sample,
      btfFile,
      timings: {
        qmpMs: Math.round(qmpMs * 100) / 100,
        vmcoreinfoScanPageAligned: scanAligned,
        vmcoreinfoScanAnywhere: scanAnywhere,
        modelCold: cold,
        modelWarmCacheWithScan: warmScan,
        modelWarmCacheWithHint: warmHint,
        ramBytes: mem.size.toString(),
      },
      failures,
    };
    process.stdout.write(JSON.stringify(report, (_k, v: unknown) => (typeof v === "bigint" ? "0x" + v.toString(16) : v), 2) + "\n");
    return failures.length === 0 ? 0 : 1;
  } finally {
    mem.close();
  }
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    process.stderr.write(`dev-check failed: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1);
  },
);
