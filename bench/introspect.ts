/**
 * Introspection benchmark, 256 MiB tiny guest under TCG.
 *
 * (1) The engine on one VM (a raw QEMU with exactly vigil's argv, so this process owns its QMP socket): the
 *     kernel model cold and from the build-id cache, the baseline, the first sweep after it, and steady-state
 *     sweeps (wall and CPU time). Baselines, in the same run, for the same guest-memory reads: every page one
 *     sweep reads, fetched through QMP `xp` (HMP, what a tool without the RAM memfd would do), and a QMP
 *     `pmemsave` of all RAM followed by the same sweep over the dump. Goals: first sweep ≤ 100 ms, steady ≤ 5 ms.
 * (2) Watching N VMs through the daemon: its CPU time per second with N running VMs unwatched, then watched every
 *     1 s with the guest's own view every sweep and every 10th sweep, and QEMU's CPU for the same windows (the
 *     agent's ps runs in the guest). Goal: ≥ 20 VMs per core at 1 s, derived from the measured extra CPU per
 *     watched VM, and from per-sweep CPU.
 *
 *   npm run bench -- introspect [steadySweeps=300] [watchedVms=3] [windowSeconds=30]
 */
import { spawn } from "node:child_process";
import { existsSync, readFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import { AgentClient } from "../src/guest-agent/agent-client.ts";
import { openGuestRam } from "../src/host/guest-ram.ts";
import { guestRamBytes } from "../src/qemu/argv.ts";
import { QmpClient } from "../src/qemu/qmp-client.ts";
import { buildKernelModel, type KernelModelCache } from "../src/introspection/kernel-model.ts";
import { parseControlRegisters } from "../src/introspection/page-walk.ts";
import { FilePhysicalMemory, parseMtreeFlat, ramRegionsFromMtree, type PhysicalMemory, type RamRegion } from "../src/introspection/physical-memory.ts";
import { sweep, takeBaseline, type SweepState } from "../src/introspection/sweep.ts";
import { benchDaemon, machineLine, median, percentile, report } from "./lib.ts";

/** Guest-physical memory that remembers which pages were read (to replay the same reads through QMP). */
class RecordingMemory implements PhysicalMemory {
  readonly pages = new Set<bigint>();
  constructor(private readonly inner: PhysicalMemory) {}
  get regions(): readonly RamRegion[] {
    return this.inner.regions;
  }
  get size(): bigint {
    return this.inner.size;
  }
  private note(paddr: bigint, length: number): void {
    for (let p = paddr >> 12n; p <= (paddr + BigInt(Math.max(0, length - 1))) >> 12n && this.pages.size < 1 << 20; p++) this.pages.add(p);
  }
  read(paddr: bigint, length: number): Buffer | undefined {
    this.note(paddr, length);
    return this.inner.read(paddr, length);
  }
  readInto(paddr: bigint, dst: Buffer, dstOffset: number, length: number): boolean {
    this.note(paddr, length);
    return this.inner.readInto(paddr, dst, dstOffset, length);
  }
  clearCache(): void {
    this.inner.clearCache();
  }
  close(): void {
    this.inner.close();
  }
}

const cpuMs = (u: NodeJS.CpuUsage): number => (u.user + u.system) / 1000;
const TICK_MS = 1000 / 100; // USER_HZ: /proc/PID/stat counts clock ticks of 10 ms

/** utime + stime of a process, in ms. */
function procCpuMs(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(f[11]) + Number(f[12])) * TICK_MS;
}

async function engine(d: Awaited<ReturnType<typeof benchDaemon>>, steadyN: number): Promise<{ steadyCpuMs: number; regsCpuMs: number }> {
  await d.api("POST", "/v1/vms", { name: "engine", memoryMiB: 256 });
  const cmd = await d.api<{ binary: string; argv: string[] }>("GET", "/v1/vms/engine/qemu-command");
  const vm = await d.api<{ paths: { qmpSocket: string; agentSocket: string } }>("GET", "/v1/vms/engine");
  // The run directory is created by vigil on start: start and kill once, then run QEMU by hand.
  await d.api("POST", "/v1/vms/engine/start", {});
  await d.api("POST", "/v1/vms/engine/kill");
  for (const p of [vm.paths.qmpSocket, vm.paths.agentSocket]) rmSync(p, { force: true });
  const qemu = spawn(cmd.binary, cmd.argv, { stdio: "ignore" });
  const exited = new Promise((r) => qemu.once("exit", r));
  try {
    while (!existsSync(vm.paths.qmpSocket)) await new Promise((r) => setTimeout(r, 5));
    const qmp = await QmpClient.connect(vm.paths.qmpSocket);
    await qmp.execute("cont");
    const agent = await AgentClient.connect(vm.paths.agentSocket);
    await agent.waitUntilAnswering(120_000);
    agent.close();
    await new Promise((r) => setTimeout(r, 2000));
    const regions = ramRegionsFromMtree(parseMtreeFlat(await qmp.hmp("info mtree -f")), "ram0");
    const regs = async () => parseControlRegisters(await qmp.hmp("info registers -a"));
    const r0 = (await regs())[0]!;

    // Model: cold (kallsyms and BTF decoded), then from the build-id cache.
    const cold: number[] = [];
    const warm: number[] = [];
    const cache: KernelModelCache = new Map();
    for (let i = 0; i < 3; i++) {
      const mem = FilePhysicalMemory.fromFd(openGuestRam(qemu.pid!, guestRamBytes(256, "tcg")), regions);
      let t = performance.now();
      buildKernelModel(mem, { cr3: r0.cr3, cr4: r0.cr4 });
      cold.push(performance.now() - t);
      if (i === 0) buildKernelModel(mem, { cr3: r0.cr3, cr4: r0.cr4, cache });
      t = performance.now();
      buildKernelModel(mem, { cr3: r0.cr3, cr4: r0.cr4, cache });
      warm.push(performance.now() - t);
      mem.close();
    }
    // Baseline and first sweep, each round on a fresh descriptor (no page cache carried over).
    const baselineMs: number[] = [];
    const first: number[] = [];
    const firstWithModel: number[] = [];
    for (let i = 0; i < 5; i++) {
      const mem = FilePhysicalMemory.fromFd(openGuestRam(qemu.pid!, guestRamBytes(256, "tcg")), regions);
      let t = performance.now();
      const model = buildKernelModel(mem, { cr3: r0.cr3, cr4: r0.cr4, cache });
      const modelMs = performance.now() - t;
      t = performance.now();
      const b = takeBaseline({ model, phys: mem, regs: await regs() });
      baselineMs.push(performance.now() - t);
      const rr = await regs();
      t = performance.now();
      const out = sweep({ model, phys: mem, regs: rr }, b, undefined);
      const ms = performance.now() - t;
      first.push(ms);
      firstWithModel.push(ms + modelMs);
      if (out.report.findings.some((f) => f.severity !== "info")) throw new Error(`clean guest, yet: ${out.report.findings[0]?.message}`);
      mem.close();
    }

    // Steady state: one baseline, sweeps carrying their state; wall and CPU time; the QMP register read too.
    const file = FilePhysicalMemory.fromFd(openGuestRam(qemu.pid!, guestRamBytes(256, "tcg")), regions, { maxCachedPages: 4096 });
    const rec = new RecordingMemory(file);
    const model = buildKernelModel(rec, { cr3: r0.cr3, cr4: r0.cr4, cache });
    const baseline = takeBaseline({ model, phys: rec, regs: await regs() });
    let state: SweepState | undefined;
    const steady: number[] = [];
    const steadyCpu: number[] = [];
    const regsMs: number[] = [];
    const regsCpu: number[] = [];
    let pagesPerSweep: number[] = [];
    let firstPages = 0;
    for (let i = 0; i < steadyN; i++) {
      let c = process.cpuUsage();
      let t = performance.now();
      const rr = await regs();
      regsMs.push(performance.now() - t);
      regsCpu.push(cpuMs(process.cpuUsage(c)));
      rec.pages.clear();
      c = process.cpuUsage();
      t = performance.now();
      const out = sweep({ model, phys: rec, regs: rr }, baseline, state);
      steady.push(performance.now() - t);
      steadyCpu.push(cpuMs(process.cpuUsage(c)));
      state = out.state;
      if (i === 0) firstPages = rec.pages.size;
      else pagesPerSweep.push(rec.pages.size);
    }
    pagesPerSweep = pagesPerSweep.length ? pagesPerSweep : [firstPages];
    // The same reads through QMP: every page of one steady sweep via `xp`, and a pmemsave of all RAM.
    const lastPages = [...rec.pages];
    const xpMs: number[] = [];
    for (let round = 0; round < 5; round++) {
      const t = performance.now();
      for (const pfn of lastPages) {
        const text = await qmp.hmp(`xp /512xg 0x${(pfn << 12n).toString(16)}`);
        if (!text.includes(":")) throw new Error("xp returned nothing");
      }
      xpMs.push(performance.now() - t);
    }
    const dump = join(d.home, "pmemsave.bin");
    const pmem: number[] = [];
    for (let round = 0; round < 3; round++) {
      rmSync(dump, { force: true });
      const t = performance.now();
      await qmp.execute("pmemsave", { val: 0, size: 256 * 1024 * 1024, filename: dump }, { timeoutMs: 120_000 });
      const mem = FilePhysicalMemory.open(dump, [{ name: "dump", start: 0n, end: 256n * 1024n * 1024n, fileOffset: 0n, readOnly: false }]);
      const m = buildKernelModel(mem, { cr3: r0.cr3, cr4: r0.cr4, cache });
      sweep({ model: m, phys: mem, regs: await regs() }, baseline, undefined);
      mem.close();
      pmem.push(performance.now() - t);
    }
    rmSync(dump, { force: true });
    rec.close();

    const f1 = (v: number) => v.toFixed(1);
    process.stdout.write(`\n## engine on one VM\n`);
    process.stdout.write(`  kernel model, cold (kallsyms + BTF decoded)    median ${f1(median(cold))} ms  (${cold.map(f1).join(", ")})\n`);
    process.stdout.write(`  kernel model, same build from the cache        median ${f1(median(warm))} ms  (${warm.map(f1).join(", ")})\n`);
    process.stdout.write(`  baseline (per boot)                            median ${f1(median(baselineMs))} ms  (${baselineMs.map(f1).join(", ")})\n`);
    process.stdout.write(`  first sweep after the baseline                 median ${f1(median(first))} ms; with the cached model ${f1(median(firstWithModel))} ms   (goal ≤ 100 ms)\n`);
    process.stdout.write(`  steady sweep (n=${steadyN})                         median ${median(steady).toFixed(2)} ms, p90 ${percentile(steady, 90).toFixed(2)} ms, max ${Math.max(...steady).toFixed(1)} ms; CPU median ${median(steadyCpu).toFixed(2)} ms   (goal ≤ 5 ms)\n`);
    process.stdout.write(`  QMP info registers -a per sweep                median ${median(regsMs).toFixed(2)} ms wall, ${median(regsCpu).toFixed(2)} ms CPU here\n`);
    process.stdout.write(`  guest pages read: first sweep ${firstPages}, steady sweep median ${median(pagesPerSweep)}\n`);
    const every = Math.max(1, Math.floor(steady.length / 15));
    report(`steady sweep: the same ${lastPages.length} guest pages`, "ms", { label: "QMP xp (HMP) of each page, sequential", values: xpMs }, { label: `vigil steady sweep (every ${every}th of ${steady.length})`, values: steady.filter((_, i) => i % every === 0) }, "≤ 5 ms");
    report("first sweep of a VM", "ms", { label: "QMP pmemsave 256 MiB + same sweep of the dump", values: pmem }, { label: "vigil: cached model + first sweep", values: firstWithModel }, "≤ 100 ms");
    await qmp.execute("quit").catch(() => undefined);
    await qmp.close();
    return { steadyCpuMs: median(steadyCpu), regsCpuMs: median(regsCpu) };
  } finally {
    qemu.kill("SIGKILL");
    await exited;
  }
}

async function watching(d: Awaited<ReturnType<typeof benchDaemon>>, n: number, windowS: number, perSweep: { steadyCpuMs: number; regsCpuMs: number }): Promise<void> {
  const names = Array.from({ length: n }, (_, i) => `w${i + 1}`);
  for (const name of names) await d.api("POST", "/v1/vms", { name, memoryMiB: 256 });
  for (const name of names) await d.api("POST", `/v1/vms/${name}/start`, { wait: true });
  // Baselines are taken about a second after each agent answers; let them finish before measuring.
  await new Promise((r) => setTimeout(r, 5000));
  const daemonPid = Number(readFileSync(join(d.home, "run", "vigil.pid"), "utf8"));
  const qemuPids = await Promise.all(names.map(async (name) => (await d.api<{ pid: number }>("GET", `/v1/vms/${name}`)).pid));
  const measure = async (): Promise<{ daemon: number; qemu: number }> => {
    const d0 = procCpuMs(daemonPid);
    const q0 = qemuPids.reduce((s, p) => s + procCpuMs(p), 0);
    await new Promise((r) => setTimeout(r, windowS * 1000));
    return { daemon: ((procCpuMs(daemonPid) - d0) / windowS), qemu: (qemuPids.reduce((s, p) => s + procCpuMs(p), 0) - q0) / windowS };
  };
  const idle = await measure();
  const watchAll = async (guestViewEvery: number) => {
    for (const name of names) await d.api("PUT", `/v1/vms/${name}/watch`, { intervalMs: 1000, policy: "alert", guestViewEvery });
    await new Promise((r) => setTimeout(r, 3000));
    return measure();
  };
  const everySweep = await watchAll(1);
  const everyTenth = await watchAll(10);
  const { watches } = await d.api<{ watches: Array<{ vm: string; sweeps: number; status: string; activeFindings: number }> }>("GET", "/v1/watches");
  const perVm = (m: { daemon: number; qemu: number }) => ({ daemon: Math.max(0.01, (m.daemon - idle.daemon) / n), qemu: Math.max(0, (m.qemu - idle.qemu) / n) });
  const a = perVm(everySweep);
  const b = perVm(everyTenth);
  const f1 = (v: number) => v.toFixed(1);
  process.stdout.write(`\n## watching ${n} VMs every 1 s (${windowS} s windows; CPU ms per second)\n`);
  process.stdout.write(`  ${n} VMs running, unwatched                      daemon ${f1(idle.daemon)} ms/s, QEMU (all) ${f1(idle.qemu)} ms/s\n`);
  process.stdout.write(`  watched, guest view every sweep               daemon ${f1(everySweep.daemon)} ms/s, QEMU ${f1(everySweep.qemu)} ms/s → per VM: daemon ${f1(a.daemon)}, guest ${f1(a.qemu)} ms/s\n`);
  process.stdout.write(`  watched, guest view every 10th sweep          daemon ${f1(everyTenth.daemon)} ms/s, QEMU ${f1(everyTenth.qemu)} ms/s → per VM: daemon ${f1(b.daemon)}, guest ${f1(b.qemu)} ms/s\n`);
  process.stdout.write(`  watches: ${watches.map((w) => `${w.vm} ${w.status} ${w.sweeps} sweeps, ${w.activeFindings} findings`).join("; ")}\n`);
  process.stdout.write(`  VMs per core at 1 s (daemon CPU, measured)     ${(1000 / a.daemon).toFixed(0)} with the guest view every sweep, ${(1000 / b.daemon).toFixed(0)} every 10th   (goal ≥ 20)\n`);
  process.stdout.write(`  VMs per core at 1 s (daemon + guest CPU)       ${(1000 / (a.daemon + a.qemu)).toFixed(0)} with the guest view every sweep, ${(1000 / (b.daemon + b.qemu)).toFixed(0)} every 10th (TCG: the agent's ps forks awk in the guest)\n`);
  process.stdout.write(`  VMs per core at 1 s, from per-sweep CPU        ${(1000 / (perSweep.steadyCpuMs + perSweep.regsCpuMs)).toFixed(0)}   (sweep ${perSweep.steadyCpuMs.toFixed(2)} + QMP registers ${perSweep.regsCpuMs.toFixed(2)} ms CPU, no guest view)\n`);
}

export async function run(args: string[]): Promise<void> {
  const steadyN = Math.max(20, Number(args[0] ?? 300));
  const n = Math.max(1, Number(args[1] ?? 3));
  const windowS = Math.max(5, Number(args[2] ?? 30));
  const d = await benchDaemon();
  try {
    const host = await d.api<{ accelerator: string }>("GET", "/v1/host");
    process.stdout.write(`introspection benchmark: ${steadyN} steady sweeps, ${n} watched VMs, ${windowS} s windows; 256 MiB tiny guests; ${machineLine(host.accelerator)}\n`);
    const perSweep = await engine(d, steadyN);
    await watching(d, n, windowS, perSweep);
  } finally {
    await d.close();
  }
}
