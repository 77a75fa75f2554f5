/**
 * Developer proof of the sweep engine on a real guest (to become integration tests): boots the tiny image with
 * its RAM on a file, takes a baseline, then attacks the kernel FROM THE HOST — writes through a second,
 * read-write descriptor of the RAM file while the VM is paused (QMP stop/cont) — and shows that each attack is
 * detected within two sweeps and that the guest's own legitimate self-patching (a tracepoint, the function
 * tracer) is explained rather than alarmed. Also measures the engine's timings.
 *
 *   node --import tsx src/introspection/dev-tamper.ts [--image DIR] [--keep] [--steady N]
 *
 * --image defaults to the tiny image in the vigil cache (VIGIL_CACHE). Output: one JSON document on stdout.
 * Exit status 0 when every scenario behaved as expected.
 */
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { connect, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { AgentClient } from "../guest-agent/agent-client.ts";
import { ImageCatalog } from "../image/catalog.ts";
import { vigilCache } from "../paths.ts";
import { QmpClient } from "../qemu/qmp-client.ts";
import { buildKernelModel, type KernelModel, type KernelModelCache } from "./kernel-model.ts";
import { parseControlRegisters, type ControlRegisters } from "./page-walk.ts";
import { FilePhysicalMemory, parseMtreeFlat, ramRegionsFromMtree, type RamRegion } from "./physical-memory.ts";
import { initialSweepState, sweep, takeBaseline, type Baseline, type CheckId, type Finding, type SweepOptions, type SweepReport, type SweepState } from "./sweep.ts";
import {
  RamFileWriter,
  locateModule,
  locateTask,
  overwriteSyscall,
  patchKernel,
  redirectIdtGate,
  relinkListNode,
  unlinkModule,
  unlinkTask,
  writeVirtual,
} from "./testing/attacker.ts";

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return Math.round((s[Math.floor(s.length / 2)] ?? NaN) * 1000) / 1000;
};
const pct = (xs: number[], p: number): number => {
  const s = [...xs].sort((a, b) => a - b);
  return Math.round((s[Math.min(s.length - 1, Math.floor(s.length * p))] ?? NaN) * 1000) / 1000;
};

/** A QEMU running the tiny image, RAM on a file in a private directory. */
interface Vm {
  dir: string;
  proc: ChildProcess;
  ram: string;
  qmp: string;
  agent: string;
  serial: string;
}

async function bootVm(image: string): Promise<Vm> {
  const dir = mkdtempSync(join(tmpdir(), "vigil-tamper-"));
  const manifest = JSON.parse(readFileSync(join(image, "manifest.json"), "utf8")) as { cmdline: string };
  const vm = { dir, ram: join(dir, "ram"), qmp: join(dir, "qmp.sock"), agent: join(dir, "agent.sock"), serial: join(dir, "serial.sock") };
  const overlay = join(dir, "vm.qcow2");
  const img = spawnSync("qemu-img", ["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", join(image, "disk.qcow2"), overlay]);
  if (img.status !== 0) throw new Error(`qemu-img failed: ${img.stderr.toString()}`);
  const args = [
    "-nodefaults", "-no-user-config",
    "-machine", "pc-i440fx-7.2,accel=tcg,dump-guest-core=off,memory-backend=mem",
    "-object", `memory-backend-file,id=mem,size=256M,mem-path=${vm.ram},share=on`, "-m", "256", "-smp", "1", "-cpu", "max",
    "-kernel", join(image, "vmlinuz"), "-initrd", join(image, "initrd.img"), "-append", manifest.cmdline,
    "-device", "virtio-serial-pci,id=vser0",
    "-chardev", `socket,id=agent0,path=${vm.agent},server=on,wait=off`,
    "-device", "virtserialport,bus=vser0.0,chardev=agent0,name=org.vigil.agent.0",
    "-chardev", `socket,id=qmp,path=${vm.qmp},server=on,wait=off`, "-mon", "chardev=qmp,mode=control",
    "-chardev", `socket,id=ser0,path=${vm.serial},server=on,wait=off`, "-serial", "chardev:ser0",
    "-blockdev", `driver=file,filename=${overlay},node-name=f0`, "-blockdev", "driver=qcow2,file=f0,node-name=d0", "-device", "virtio-blk-pci,drive=d0",
    "-display", "none",
  ];
  const proc = spawn("qemu-system-x86_64", args, { stdio: ["ignore", "ignore", "pipe"] });
  for (let i = 0; i < 200 && !(existsSync(vm.qmp) && existsSync(vm.agent) && existsSync(vm.serial)); i++) await sleep(50);
  if (!existsSync(vm.qmp)) throw new Error("QEMU did not create its sockets");
  return { ...vm, proc };
}

/** The root shell on the serial console: runs a command and returns its output. */
class SerialShell {
  private buf = "";
  private n = 0;
  private constructor(private readonly sock: Socket) {
    sock.on("data", (d: Buffer) => {
      this.buf += d.toString("latin1");
      if (this.buf.length > 1_000_000) this.buf = this.buf.slice(-500_000);
    });
  }
  static async connect(path: string): Promise<SerialShell> {
    const sock = connect(path);
    await new Promise<void>((resolve, reject) => {
      sock.once("connect", () => resolve());
      sock.once("error", reject);
    });
    return new SerialShell(sock);
  }
  async run(cmd: string, timeoutMs = 20_000): Promise<string> {
    const tag = `__vigil_done_${++this.n}__`;
    const start = this.buf.length;
    this.sock.write(`${cmd}; echo ${tag.slice(0, 8)}""${tag.slice(8)}\n`);
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      const at = this.buf.indexOf(tag, start);
      if (at >= 0) return this.buf.slice(start, at);
      await sleep(50);
    }
    throw new Error(`serial command timed out: ${cmd}`);
  }
  close(): void {
    this.sock.destroy();
  }
}

interface Scenario {
  name: string;
  expect: CheckId | "none";
  detectedInSweep: number | undefined;
  finding: Finding | undefined;
  cleanAfterRestore: boolean | undefined;
  notes: string[];
}

async function main(): Promise<number> {
  const { values } = parseArgs({ options: { image: { type: "string" }, keep: { type: "boolean", default: false }, steady: { type: "string", default: "200" } } });
  const image = values.image ?? new ImageCatalog(vigilCache()).tinyDir();
  if (!image || !existsSync(join(image, "manifest.json"))) {
    process.stderr.write("No tiny image: build it with guest/build-tiny.sh or pass --image DIR\n");
    return 2;
  }
  const vm = await bootVm(image);
  const cleanup: (() => void | Promise<void>)[] = [];
  const failures: string[] = [];
  const scenarios: Scenario[] = [];
  try {
    const qmp = await QmpClient.connect(vm.qmp);
    cleanup.push(() => qmp.close());
    const agent = await AgentClient.connect(vm.agent);
    cleanup.push(() => agent.close());
    const t0 = performance.now();
    await agent.waitUntilAnswering(120_000);
    const bootMs = performance.now() - t0;
    const shell = await SerialShell.connect(vm.serial);
    cleanup.push(() => shell.close());
    await shell.run("true");

    const regions: RamRegion[] = ramRegionsFromMtree(parseMtreeFlat(await qmp.hmp("info mtree -f")));
    const mem = FilePhysicalMemory.open(vm.ram, regions);
    cleanup.push(() => mem.close());
    const writer = RamFileWriter.open(vm.ram, regions);
    cleanup.push(() => writer.close());
    const registers = async (): Promise<ControlRegisters[]> => parseControlRegisters(await qmp.hmp("info registers -a"));
    const paused = async <T>(f: () => T): Promise<T> => {
      await qmp.execute("stop");
      try {
        return f();
      } finally {
        await qmp.execute("cont");
      }
    };

    // The model: cold (decode kallsyms and BTF) and warm (same build id, from the cache).
    const regs0 = await registers();
    const cpu0 = regs0[0] as ControlRegisters;
    const cache: KernelModelCache = new Map();
    let t = performance.now();
    const model = buildKernelModel(mem, { cr3: cpu0.cr3, cr4: cpu0.cr4, cache });
    const modelColdMs = performance.now() - t;
    t = performance.now();
    const warmModel = buildKernelModel(mem, { cr3: cpu0.cr3, cr4: cpu0.cr4, cache, ...(model.vmcoreinfoAt !== undefined ? { vmcoreinfoHint: model.vmcoreinfoAt } : {}) });
    const modelWarmMs = performance.now() - t;

    t = performance.now();
    const baseline = takeBaseline({ model, phys: mem, regs: regs0 });
    const baselineMs = performance.now() - t;
    const baselineJson = JSON.stringify(baseline);

    // First sweeps: right after the baseline (same process), and as a restarted daemon would do it (baseline
    // from JSON, a fresh model object from the cache / from scratch).
    const options: SweepOptions = {};
    let state: SweepState = initialSweepState();
    const run = async (extra: Partial<Parameters<typeof sweep>[0]> = {}, opts: SweepOptions = options, m: KernelModel = model, b: Baseline = baseline): Promise<SweepReport> => {
      const r = sweep({ model: m, phys: mem, regs: await registers(), ...extra }, b, state, opts);
      state = r.state;
      return r.report;
    };
    const first = await run();
    t = performance.now();
    const fromJson = JSON.parse(baselineJson) as Baseline;
    const parseMs = performance.now() - t;
    const firstWarm = sweep({ model: warmModel, phys: mem, regs: regs0 }, fromJson, undefined).report;
    t = performance.now();
    const coldModel = buildKernelModel(mem, { cr3: cpu0.cr3, cr4: cpu0.cr4 });
    const coldModelMs = performance.now() - t;
    const firstCold = sweep({ model: coldModel, phys: mem, regs: regs0 }, JSON.parse(baselineJson) as Baseline, undefined).report;
    if (first.findings.length > 0) failures.push(`first sweep has findings: ${first.findings.map((f) => f.message).join("; ")}`);

    // The lie detector's starting point: the VMI view and the guest's own view agree.
    const ps = (await agent.ps()).processes;
    const procModules = (await agent.exec(["cat", "/proc/modules"])).stdout;
    const guestModules = Buffer.from(procModules, "base64").toString().split("\n").filter(Boolean).map((l) => l.split(" ")[0] as string);
    const agreed = await run({ guestProcesses: ps, guestModules });
    const vmiLeaders = agreed.processes.filter((p) => p.pid === p.tgid && p.exitState === 0);
    const notInPs = vmiLeaders.filter((p) => p.inGuestView === false).map((p) => `${p.pid} ${p.comm}`);
    const notInVmi = ps.filter((p) => !agreed.processes.some((v) => v.pid === p.pid)).map((p) => `${p.pid} ${p.comm}`);
    const viewCheck = { vmiProcesses: vmiLeaders.length, guestProcesses: ps.length, vmiNotInPs: notInPs, psNotInVmi: notInVmi, vmiModules: agreed.modules.map((m) => m.name), guestModules };
    if (agreed.findings.length > 0) failures.push(`clean sweep with guest view has findings: ${agreed.findings.map((f) => f.message).join("; ")}`);
    if (agreed.modules.map((m) => m.name).sort().join() !== [...guestModules].sort().join()) failures.push("VMI modules differ from /proc/modules");

    /** Sweeps up to `max` times; the sweep number of the first report with a finding of `check`. */
    const detect = async (check: CheckId, max = 2, extra: () => Promise<Partial<Parameters<typeof sweep>[0]>> = async () => ({}), opts: SweepOptions = options): Promise<{ sweep: number | undefined; finding: Finding | undefined; reports: SweepReport[] }> => {
      const reports: SweepReport[] = [];
      for (let i = 1; i <= max; i++) {
        const r = await run(await extra(), opts);
        reports.push(r);
        const f = r.findings.find((x) => x.check === check);
        if (f) return { sweep: i, finding: f, reports };
      }
      return { sweep: undefined, finding: undefined, reports };
    };
    const clean = async (n = 2): Promise<boolean> => {
      let ok = true;
      for (let i = 0; i < n; i++) {
        const r = await run();
        if (r.findings.length > 0) ok = false;
      }
      return ok;
    };
    const scenario = async (name: string, expect: CheckId, attack: () => Promise<() => Promise<void>>, max = 2, extra?: () => Promise<Partial<Parameters<typeof sweep>[0]>>, opts?: SweepOptions): Promise<void> => {
      const notes: string[] = [];
      const restore = await attack();
      const d = await detect(expect, max, extra, opts);
      await restore();
      const cleaned = await clean();
      scenarios.push({ name, expect, detectedInSweep: d.sweep, finding: d.finding, cleanAfterRestore: cleaned, notes });
      if (d.sweep === undefined) failures.push(`${name}: not detected within ${max} sweeps`);
      if (!cleaned) failures.push(`${name}: findings remain after restoring`);
    };

    const sym = (n: string): bigint => {
      const a = model.symbols.address(n);
      if (a === undefined) throw new Error(`no symbol ${n}`);
      return a;
    };

    // 1. A system call table entry (kill → getpid's handler).
    await scenario("overwrite sys_call_table[62]", "syscall-table", async () => {
      const old = await paused(() => overwriteSyscall(model, writer, 62, sym("__x64_sys_getpid")));
      return async () => void (await paused(() => overwriteSyscall(model, writer, 62, old)));
    });
    // 2. One byte of the dispatch switch (not at a patch site: 64 bytes into x64_sys_call).
    await scenario("change a byte of x64_sys_call", "syscall-text", async () => {
      const at = sym("x64_sys_call") + 0x40n;
      const old = await paused(() => patchKernel(model, writer, at, Buffer.from([0xcc])));
      if (old[0] === 0xcc) throw new Error("x64_sys_call+0x40 already holds 0xcc");
      return async () => void (await paused(() => patchKernel(model, writer, at, old)));
    });
    // 3. An IDT gate: vector 0x80 (32-bit int 0x80 emulation, unused by this 64-bit guest) → another handler.
    await scenario("redirect IDT vector 0x80", "idt-gate", async () => {
      const old = await paused(() => redirectIdtGate(model, writer, 0x80, sym("asm_exc_int3")));
      return async () => void (await paused(() => writeVirtual(model, writer, sym("idt_table") + 0x80n * 16n, old)));
    });
    // 4. Inline hooks in other functions' text: one on a critical page (hashed every sweep), one on a page only
    // the rotating window reaches (detected within one full pass). Both handlers are never called here.
    await scenario("inline hook in __x64_sys_delete_module (critical page)", "kernel-text", async () => {
      const at = sym("__x64_sys_delete_module") + 0x10n;
      const old = await paused(() => patchKernel(model, writer, at, Buffer.from([0xe9, 0, 0, 0, 0])));
      return async () => void (await paused(() => patchKernel(model, writer, at, old)));
    });
    await scenario(
      "inline hook in __x64_sys_swapon (rotating window)",
      "kernel-text",
      async () => {
        const at = sym("__x64_sys_swapon") + 0x10n;
        const old = await paused(() => patchKernel(model, writer, at, Buffer.from([0xe9, 0, 0, 0, 0])));
        return async () => void (await paused(() => patchKernel(model, writer, at, old)));
      },
      first.coverage.fullPassEverySweeps + 1,
    );

    // 5. DKOM: a running `sleep 1000` unlinked from the task list.
    const out = await shell.run("sleep 1000 & echo SLEEPPID=$!");
    const pid = Number(/SLEEPPID=(\d+)/.exec(out)?.[1]);
    if (!Number.isInteger(pid) || pid <= 0) throw new Error(`cannot start sleep: ${out}`);
    await run(); // the process is now in the previous view
    await scenario("unlink a running process from tasks", "hidden-process", async () => {
      const task = locateTask(model, pid);
      if (!task) throw new Error(`cannot locate pid ${pid}`);
      const u = await paused(() => unlinkTask(model, writer, task));
      return async () => {
        const ok = await paused(() => relinkListNode(model, writer, u));
        if (!ok) failures.push("could not relink the hidden process");
      };
    });
    // The same, found by the carve alone: unlinked from the task list AND its PID-table entry ignored is not
    // something we do to a live kernel; instead show the carve sees the unlinked task too.
    {
      const task = locateTask(model, pid);
      if (task) {
        const u = await paused(() => unlinkTask(model, writer, task));
        const r = await run({}, { carve: true });
        const seen = r.processes.find((p) => p.pid === pid);
        scenarios.push({
          name: "carve sees the unlinked process",
          expect: "none",
          detectedInSweep: seen?.sources.includes("carve") && !seen.sources.includes("tasks") ? 1 : undefined,
          finding: undefined,
          cleanAfterRestore: undefined,
          notes: [`sources of pid ${pid}: ${seen?.sources.join(",") ?? "not seen"}`, `carve ${r.carve?.ms ?? "?"} ms`],
        });
        if (!seen?.sources.includes("carve")) failures.push("the carve did not see the unlinked process");
        await paused(() => relinkListNode(model, writer, u));
        await clean();
      }
    }
    // 6. The guest's tools lie: a bind mount over /proc/PID hides the process from its own ps.
    {
      await shell.run(`mkdir -p /tmp/empty && mount -o bind /tmp/empty /proc/${pid}`);
      await run();
      const d = await detect("process-hidden-from-guest", 2, async () => ({ guestProcesses: (await agent.ps()).processes }));
      await shell.run(`umount /proc/${pid}`);
      await run();
      const cleaned = (await run({ guestProcesses: (await agent.ps()).processes })).findings.length === 0;
      scenarios.push({ name: "bind mount over /proc/PID", expect: "process-hidden-from-guest", detectedInSweep: d.sweep, finding: d.finding, cleanAfterRestore: cleaned, notes: [] });
      if (d.sweep === undefined) failures.push("bind mount over /proc/PID: not detected");
      if (!cleaned) failures.push("bind mount over /proc/PID: findings remain after umount");
    }
    // The race the design guards against: a process that starts after the guest's ps but before the next sweep is
    // in that sweep's VMI view and not in ps — it must not alarm (it was not in the previous sweep's view).
    {
      await run();
      const psBefore = (await agent.ps()).processes;
      const started = await shell.run("sleep 7 & echo RACEPID=$!");
      const racePid = Number(/RACEPID=(\d+)/.exec(started)?.[1]);
      const r = await run({ guestProcesses: psBefore });
      const f = r.findings.filter((x) => x.check === "process-hidden-from-guest");
      const racer = r.processes.find((p) => p.pid === racePid);
      scenarios.push({
        name: "race: process started between ps and the next sweep",
        expect: "none",
        detectedInSweep: undefined,
        finding: f[0],
        cleanAfterRestore: f.length === 0,
        notes: [`pid ${racePid}: in VMI view ${racer !== undefined}, inGuestView ${String(racer?.inGuestView)}`],
      });
      if (f.length > 0) failures.push("a process started after the guest's ps alarmed");
      if (!racer || racer.inGuestView !== false) failures.push("the race scenario did not set up the race (the new process was not seen by VMI only)");
    }
    await shell.run(`kill ${pid}`);

    // 7. A module unlinked from `modules` (it stays in the sysfs kset).
    await scenario("unlink module button from modules", "hidden-module", async () => {
      const mod = locateModule(model, "button");
      if (!mod) throw new Error("module button is not loaded");
      const u = await paused(() => unlinkModule(model, writer, mod));
      return async () => {
        const ok = await paused(() => relinkListNode(model, writer, u));
        if (!ok) failures.push("could not relink the module");
      };
    });

    // 8. Legitimate self-patching: a tracepoint, then the function tracer; a full pass of the rotating window.
    const passSweeps = first.coverage.fullPassEverySweeps + 1;
    const legit = async (name: string, on: string, off: string): Promise<void> => {
      await shell.run(on, 60_000);
      let findings: Finding[] = [];
      let last: SweepReport | undefined;
      for (let i = 0; i < passSweeps; i++) {
        last = await run();
        findings = findings.concat(last.findings);
      }
      scenarios.push({
        name,
        expect: "none",
        detectedInSweep: undefined,
        finding: findings[0],
        cleanAfterRestore: findings.length === 0,
        notes: [`explained pages ${last?.textPatches.explainedPages ?? "?"}`, `patched sites this sweep ${JSON.stringify(last?.textPatches.patchedSites)}`, `foreign targets ${JSON.stringify(last?.textPatches.foreignTargets)}`],
      });
      if (findings.length > 0) failures.push(`${name}: ${findings.length} findings (${findings[0]?.message})`);
      await shell.run(off, 60_000);
      for (let i = 0; i < passSweeps; i++) await run();
    };
    await shell.run("mount -t tracefs nodev /sys/kernel/tracing");
    await legit("tracepoint sched_switch enabled", "echo 1 > /sys/kernel/tracing/events/sched/sched_switch/enable", "echo 0 > /sys/kernel/tracing/events/sched/sched_switch/enable");
    await legit("function tracer enabled", "echo function > /sys/kernel/tracing/current_tracer", "echo nop > /sys/kernel/tracing/current_tracer");

    // Timings.
    const steadyN = Math.max(10, Math.min(5000, Number(values.steady)));
    const regsNow = await registers();
    const steady: number[] = [];
    const parts: Record<string, number[]> = {};
    for (let i = 0; i < steadyN; i++) {
      const r = sweep({ model, phys: mem, regs: regsNow }, baseline, state, options);
      state = r.state;
      steady.push(r.report.durationMs);
      for (const [k, v] of Object.entries(r.report.timings)) (parts[k] ??= []).push(v);
      if (r.report.findings.length > 0) failures.push(`steady sweep ${i}: ${r.report.findings[0]?.message}`);
    }
    const qmpRegs: number[] = [];
    for (let i = 0; i < 20; i++) {
      const s = performance.now();
      await qmp.hmp("info registers -a");
      qmpRegs.push(performance.now() - s);
    }
    const carves: number[] = [];
    for (let i = 0; i < 5; i++) {
      const r = sweep({ model, phys: mem, regs: regsNow }, baseline, state, { carve: true });
      state = r.state;
      carves.push(r.report.carve?.ms ?? NaN);
    }
    const report = {
      image,
      kernel: first.kernel,
      bootToAgentMs: Math.round(bootMs),
      baseline: { ms: Math.round(baselineMs * 10) / 10, jsonBytes: baselineJson.length, notes: baseline.notes, patchSites: baseline.text?.sites.count, criticalPages: baseline.text?.criticalPages.length },
      timings: {
        modelColdMs: Math.round(modelColdMs * 10) / 10,
        modelWarmMs: Math.round(modelWarmMs * 10) / 10,
        firstSweepAfterBaselineMs: first.durationMs,
        firstSweepWarm: { modelFromCacheMs: Math.round(modelWarmMs * 10) / 10, baselineJsonParseMs: Math.round(parseMs * 10) / 10, sweepMs: firstWarm.durationMs, timings: firstWarm.timings },
        firstSweepCold: { modelMs: Math.round(coldModelMs * 10) / 10, sweepMs: firstCold.durationMs },
        steady: { sweeps: steadyN, medianMs: median(steady), p90Ms: pct(steady, 0.9), maxMs: pct(steady, 1), partsMedianMs: Object.fromEntries(Object.entries(parts).map(([k, v]) => [k, median(v)])) },
        qmpInfoRegistersMedianMs: median(qmpRegs),
        carveMedianMs: median(carves),
      },
      coverage: first.coverage,
      viewCheck,
      scenarios: scenarios.map((s) => ({ ...s, finding: s.finding ? { check: s.finding.check, severity: s.finding.severity, message: s.finding.message, evidence: s.finding.evidence } : undefined })),
      failures,
    };
    process.stdout.write(JSON.stringify(report, null, 2) + "\n");
    return failures.length === 0 ? 0 : 1;
  } finally {
    for (const c of cleanup.reverse()) {
      try {
        await c();
      } catch {
        // best effort: the VM is killed below either way
      }
    }
    vm.proc.kill("SIGKILL");
    if (!values.keep) rmSync(vm.dir, { recursive: true, force: true });
  }
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    process.stderr.write(`dev-tamper failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exit(1);
  },
);
