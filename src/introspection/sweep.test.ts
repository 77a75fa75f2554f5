import { test } from "node:test";
import assert from "node:assert/strict";
import { IntrospectionError } from "./errors.ts";
import { buildKernelModel, type KernelModel } from "./kernel-model.ts";
import { TRAMPOLINE_GRACE_SWEEPS, initialSweepState, stateLetter, sweep, takeBaseline, type Baseline, type CheckId, type SweepInput, type SweepOptions, type SweepReport, type SweepState } from "./sweep.ts";
import { locateModule, locateTask, overwriteSyscall, patchKernel, redirectIdtGate, relinkListNode, unlinkModule, unlinkTask } from "./testing/attacker.ts";
import { LAYOUT, buildSyntheticKernel, type SyntheticKernel } from "./testing/synthetic-kernel.ts";

interface Rig {
  g: SyntheticKernel;
  model: KernelModel;
  baseline: Baseline;
  state: SweepState;
  run(extra?: Partial<SweepInput>, opts?: SweepOptions): SweepReport;
}

function rig(levels: 4 | 5 = 5): Rig {
  const g = buildSyntheticKernel({ levels });
  const model = buildKernelModel(g.mem, { cr3: (g.regs[0] as { cr3: bigint }).cr3, cr4: (g.regs[0] as { cr4: bigint }).cr4 });
  const baseline = takeBaseline({ model, phys: g.mem, regs: g.regs });
  const r: Rig = {
    g,
    model,
    baseline,
    state: initialSweepState(),
    run(extra = {}, opts = {}) {
      const out = sweep({ model, phys: g.mem, regs: g.regs, ...extra }, baseline, r.state, opts);
      r.state = out.state;
      return out.report;
    },
  };
  return r;
}

/** Findings that are alarms (the synthetic kallsyms table leaves tokens unused: an info disagreement). */
const alarms = (r: SweepReport): CheckId[] => r.findings.filter((f) => f.severity !== "info").map((f) => f.check);
const sym = (g: SyntheticKernel, n: string): bigint => g.symbols.get(n) as bigint;

for (const levels of [4, 5] as const) {
  test(`a clean ${levels}-level guest sweeps without alarms and reports both views`, () => {
    const r = rig(levels);
    assert.deepEqual(r.baseline.notes, []);
    const rep = r.run({}, { carve: true });
    assert.deepEqual(alarms(rep), []);
    const pids = rep.processes.map((p) => p.pid);
    assert.deepEqual(pids, [...r.g.tasks.filter((t) => t.pid !== 0).map((t) => t.pid)].sort((a, b) => a - b));
    const init = rep.processes.find((p) => p.pid === 1);
    assert.deepEqual(init?.sources.sort(), ["carve", "pid-table", "tasks"]);
    assert.equal(init?.comm, "init");
    const thread = rep.processes.find((p) => p.pid === 6000);
    assert.deepEqual(thread?.sources.sort(), ["carve", "pid-table"], "threads are not on the task list, and are not hidden for that");
    assert.equal(thread?.tgid, 11);
    assert.deepEqual(rep.modules.map((m) => `${m.name}:${m.sources.sort().join("+")}`), ["button:carve+kset+modules", "failover:carve+kset+modules", "net_failover:carve+kset+modules", "virtio_blk:carve+kset+modules"]);
    assert.equal(rep.coverage.taskListComplete && rep.coverage.pidTableComplete && rep.coverage.moduleListComplete && rep.coverage.moduleKsetComplete, true);
    assert.equal(rep.kernel.release, "6.12.117+deb12-cloud-amd64");
    // Every page is hashed within fullPassEverySweeps sweeps.
    const passes = rep.coverage.fullPassEverySweeps;
    assert.ok(passes >= 1 && rep.coverage.textBytesTotal > 0);
    for (let i = 0; i < passes; i++) assert.deepEqual(alarms(r.run()), []);
  });
}

test("the baseline is plain JSON and works after a round trip", () => {
  const r = rig();
  const copy = JSON.parse(JSON.stringify(r.baseline)) as Baseline;
  const out = sweep({ model: r.model, phys: r.g.mem, regs: r.g.regs }, copy);
  assert.deepEqual(alarms(out.report), []);
  const state = JSON.parse(JSON.stringify(out.state)) as SweepState;
  assert.deepEqual(alarms(sweep({ model: r.model, phys: r.g.mem, regs: r.g.regs }, copy, state).report), []);
});

test("CR0.WP, CR4.SMEP and CR4.SMAP cleared on any vCPU are findings", () => {
  const r = rig();
  const cpu0 = r.g.regs[0] as (typeof r.g.regs)[number];
  const bad = [cpu0, { ...cpu0, cpu: 1, cr0: cpu0.cr0 & ~(1n << 16n), cr4: cpu0.cr4 & ~((1n << 20n) | (1n << 21n)) }];
  assert.deepEqual(alarms(r.run({ regs: bad })).sort(), ["cr0-wp", "cr4-smap", "cr4-smep"]);
});

test("a sys_call_table entry redirected is found in the first sweep and names both handlers", () => {
  const r = rig();
  r.run();
  const old = overwriteSyscall(r.model, r.g.writer, 15, sym(r.g, "__x64_sys_getpid"));
  const rep = r.run();
  const f = rep.findings.find((x) => x.check === "syscall-table");
  assert.ok(f, JSON.stringify(rep.findings));
  assert.equal(f.severity, "critical");
  assert.equal(f.evidence.index, 15);
  assert.equal(f.evidence.symbol, "__x64_sys_kill");
  assert.match(String(f.evidence.foundSymbol), /sys_getpid/);
  overwriteSyscall(r.model, r.g.writer, 15, old);
  assert.deepEqual(alarms(r.run()), []);
  // Pointing outside kernel text is said so.
  overwriteSyscall(r.model, r.g.writer, 3, 0xffff_ffff_c000_1000n);
  assert.match(r.run().findings.find((x) => x.check === "syscall-table")?.message ?? "", /outside kernel text/);
});

test("a syscall redirect names the system call and attributes the new handler: kernel symbol, module, hidden module, unknown memory", () => {
  const r = rig();
  r.run();
  const button = r.g.modules.find((m) => m.name === "button") as { address: bigint };
  const failover = r.g.modules.find((m) => m.name === "failover") as { address: bigint };
  const cases: [bigint, Record<string, unknown>][] = [
    [sym(r.g, "late_text_function") + 0x10n, { kind: "kernel", symbol: "late_text_function+0x10", inText: true }],
    [button.address + 0x1000n + 0x24n, { kind: "module", module: "button", hidden: false, offset: "0x24" }],
    [0xffff_ffff_c030_0000n, { kind: "unknown", area: "module-area" }],
  ];
  for (const [to, want] of cases) {
    overwriteSyscall(r.model, r.g.writer, 15, to);
    const f = r.run().findings.find((x) => x.check === "syscall-table");
    assert.ok(f);
    assert.match(f.message, /^System call 15 \(kill\): /);
    assert.deepEqual(f.evidence.syscall, { number: 15, name: "kill" });
    const a = f.evidence.attribution as Record<string, unknown>;
    for (const [k, v] of Object.entries(want)) assert.equal(a[k], v, `${k} for ${to.toString(16)}: ${JSON.stringify(a)}`);
  }
  // A module unlinked from the list (still in sysfs) owns the handler: "hidden".
  unlinkModule(r.model, r.g.writer, locateModule(r.model, "failover") as NonNullable<ReturnType<typeof locateModule>>);
  overwriteSyscall(r.model, r.g.writer, 0, failover.address + 0x1000n);
  const f = r.run().findings.find((x) => x.check === "syscall-table" && x.evidence.index === 0);
  assert.deepEqual(f?.evidence.attribution, { kind: "module", module: "failover", hidden: true, offset: "0x0", description: 'hidden module "failover" (not on the module list) +0x0' });
  assert.match(f?.message ?? "", /^System call 0 \(read\): .*hidden module "failover"/);
});

test("x64_sys_call rewired: the finding names the system calls whose calls changed and where they go now", () => {
  const r = rig();
  r.run();
  const xs = sym(r.g, "x64_sys_call");
  // The case of syscall 15 (kill) is at +32 + 15*8: make it call a module's code instead of __x64_sys_kill.
  const at = xs + 32n + 15n * 8n;
  const to = (r.g.modules[0] as { address: bigint }).address + 0x1000n;
  const b = Buffer.alloc(5);
  b[0] = 0xe8;
  b.writeInt32LE(Number(to - (at + 5n)), 1);
  patchKernel(r.model, r.g.writer, at, b);
  const f = r.run().findings.find((x) => x.check === "syscall-text");
  assert.ok(f);
  assert.match(f.message, /system call 15 \(kill\) now goes to module "virtio_blk" \+0x0/);
  assert.deepEqual(f.evidence.syscalls, [{ number: 15, name: "kill" }]);
  const rw = (f.evidence.rewired as { was: string; now: { kind: string; module: string } }[])[0];
  assert.equal(rw?.was, "__x64_sys_kill");
  assert.equal(rw?.now.kind, "module");
});

test("a rewritten ftrace site's target is attributed in the kernel-text finding", () => {
  const r = rig();
  const site = sym(r.g, "__x64_sys_kill") + 4n;
  const to = 0xffff_ffff_c030_0000n;
  const b = Buffer.alloc(5);
  b[0] = 0xe8;
  b.writeInt32LE(Number(to - (site + 5n)), 1);
  r.g.writeVa(site, b);
  const f = r.run().findings.find((x) => x.check === "kernel-text");
  assert.match(f?.message ?? "", /the ftrace site at __x64_sys_kill\+0x4 now branches to unknown memory in the module area/);
  const s0 = (f?.evidence.illegitimateSites as { target: string; attribution: { kind: string } }[])[0];
  assert.deepEqual([s0?.target, s0?.attribution.kind], ["0xffffffffc0300000", "unknown"]);
});

test("a changed byte in x64_sys_call is a syscall-text finding with the exact bytes", () => {
  const r = rig();
  const at = sym(r.g, "x64_sys_call") + 0x40n;
  const old = patchKernel(r.model, r.g.writer, at, Buffer.from([0xcc]));
  const rep = r.run();
  const f = rep.findings.find((x) => x.check === "syscall-text");
  assert.ok(f, JSON.stringify(rep.findings));
  assert.equal(f.evidence.symbol, "x64_sys_call+0x40");
  assert.equal(f.evidence.expected, old.toString("hex"));
  assert.equal(f.evidence.found, "cc");
  assert.ok(!alarms(rep).includes("kernel-text"), "the same change is not reported twice");
  patchKernel(r.model, r.g.writer, at, old);
  assert.deepEqual(alarms(r.run()), []);
  // entry_SYSCALL_64 is checked through its internal labels.
  const e = sym(r.g, "entry_SYSCALL_64") + 0x100n;
  patchKernel(r.model, r.g.writer, e, Buffer.from([0x90, 0x90]));
  assert.equal(r.run().findings.find((x) => x.check === "syscall-text")?.evidence.function, "entry_SYSCALL_64");
});

test("an IDT gate redirected, or made callable from user space, is found", () => {
  const r = rig();
  const old = redirectIdtGate(r.model, r.g.writer, 14, sym(r.g, "late_text_function"));
  let f = r.run().findings.find((x) => x.check === "idt-gate");
  assert.equal(f?.evidence.vector, 14);
  assert.deepEqual(f?.evidence.changed, ["handler"]);
  r.g.writeVa(sym(r.g, "idt_table") + 14n * 16n, old);
  assert.deepEqual(alarms(r.run()), []);
  // DPL 0 → 3 on the page-fault vector.
  const g5 = r.g.readVa(sym(r.g, "idt_table") + 14n * 16n + 5n, 1)[0] as number;
  r.g.writeVa(sym(r.g, "idt_table") + 14n * 16n + 5n, [g5 | 0x60]);
  f = r.run().findings.find((x) => x.check === "idt-gate");
  assert.deepEqual(f?.evidence.changed, ["dpl"]);
  r.g.writeVa(sym(r.g, "idt_table") + 14n * 16n + 5n, [g5]);
  // A handler outside kernel text is said so.
  redirectIdtGate(r.model, r.g.writer, 0x80, 0xffff_ffff_c000_0000n);
  assert.match(r.run().findings.find((x) => x.check === "idt-gate")?.message ?? "", /outside kernel text/);
});

test("IDTR pointing elsewhere, or the alias remapped, is an idt-base finding", () => {
  const r = rig();
  const cpu0 = r.g.regs[0] as (typeof r.g.regs)[number];
  assert.ok(alarms(r.run({ regs: [{ ...cpu0, idtBase: sym(r.g, "idt_table") + 0x1000n }] })).includes("idt-base"));
  // Remap the alias page onto another frame through the kernel page tables.
  const rr = rig();
  const t = rr.model.kernel.translate(0xffff_fe00_0000_0000n);
  assert.ok(t.mapped);
  rr.model.kernel.clearCache();
  // Find and rewrite the level-1 entry that maps the alias (walk the tables by hand).
  const root = rr.model.kernelRoot;
  let table = root.base;
  for (let level = root.levels; level > 1; level--) {
    const idx = (0xffff_fe00_0000_0000n >> BigInt(12 + 9 * (level - 1))) & 0x1ffn;
    table = rr.g.ram.readBigUInt64LE(Number(table + idx * 8n)) & 0x000f_ffff_ffff_f000n;
  }
  const entry = rr.g.ram.readBigUInt64LE(Number(table));
  rr.g.ram.writeBigUInt64LE((entry & ~0x000f_ffff_ffff_f000n) | 0x100_0000n, Number(table));
  const rep = rr.run();
  const f = rep.findings.find((x) => x.check === "idt-base");
  assert.equal(f?.evidence.found, "0x1000000", JSON.stringify(rep.findings));
});

test("ftrace, jump labels and static calls patched legitimately are explained, not alarmed", () => {
  const r = rig();
  const passes = r.run().coverage.fullPassEverySweeps;
  for (const s of r.g.sites) {
    if (s.kind === "ftrace") r.g.ftraceOn(s);
    if (s.kind === "jump-label") r.g.jumpLabelOn(s);
    if (s.kind === "static-call") r.g.staticCallTo(s, sym(r.g, "late_text_function"));
    if (s.kind === "static-call-tramp") r.g.staticCallTo(s, sym(r.g, "function_trace_call"));
  }
  let explained = 0;
  const kinds = new Set<string>();
  for (let i = 0; i <= passes; i++) {
    const rep = r.run();
    assert.deepEqual(alarms(rep), [], JSON.stringify(rep.findings.slice(0, 3)));
    explained = rep.textPatches.explainedPages;
    for (const k of Object.keys(rep.textPatches.patchedSites)) kinds.add(k);
  }
  assert.ok(explained > 3, `${explained} pages explained`);
  assert.deepEqual([...kinds].sort(), ["ftrace", "jump-label", "static-call", "static-call-tramp"]);
  // A call into the trampoline of a registered ftrace_ops is explained but reported as a foreign target.
  const site = r.g.sites.find((s) => s.kind === "ftrace" && s.address > sym(r.g, "x64_sys_call") && s.address < sym(r.g, "do_syscall_64")) as (typeof r.g.sites)[number];
  r.g.addFtraceOps(0xffff_ffff_c010_0000n);
  const b = Buffer.alloc(5);
  b[0] = 0xe8;
  b.writeInt32LE(Number(0xffff_ffff_c010_0000n - (site.address + 5n)), 1);
  r.g.writeVa(site.address, b);
  const rep = r.run();
  assert.deepEqual(alarms(rep), []);
  assert.deepEqual(rep.textPatches.foreignTargets, ["0xffffffffc0100000"]);
});

test("a patch site rewritten to something a kernel never writes there is a finding", () => {
  const r = rig();
  // An ftrace site of x64_sys_call's page turned into a jmp into the middle of a function.
  const xs = sym(r.g, "x64_sys_call");
  const site = r.g.sites.find((s) => s.kind === "ftrace" && s.address === xs + 4n) as (typeof r.g.sites)[number];
  const b = Buffer.alloc(5);
  b[0] = 0xe8;
  b.writeInt32LE(Number(sym(r.g, "late_text_function") + 7n - (site.address + 5n)), 1);
  r.g.writeVa(site.address, b);
  const f = r.run().findings.find((x) => x.check === "syscall-text");
  assert.ok(f);
  // A jump label jumping somewhere other than its entry's target.
  const r2 = rig();
  const jl = r2.g.sites.find((s) => s.kind === "jump-label" && s.length === 5) as (typeof r2.g.sites)[number];
  const j = Buffer.alloc(5);
  j[0] = 0xe9;
  j.writeInt32LE(Number((jl.target as bigint) + 3n - (jl.address + 5n)), 1);
  r2.g.writeVa(jl.address, j);
  let found: SweepReport["findings"] = [];
  const passes = r2.run().coverage.fullPassEverySweeps;
  for (let i = 0; i <= passes; i++) found = found.concat(r2.run().findings.filter((x) => x.severity !== "info"));
  assert.ok(found.some((x) => (x.check === "kernel-text" || x.check === "syscall-text") && JSON.stringify(x.evidence).includes("jump label jmp goes to")), JSON.stringify(found));
});

test("an ftrace call site made to call another kernel function, module code or an unregistered trampoline is a finding", () => {
  const callAt = (r: Rig, at: bigint, to: bigint): void => {
    const b = Buffer.alloc(5);
    b[0] = 0xe8;
    b.writeInt32LE(Number(to - (at + 5n)), 1);
    r.g.writeVa(at, b);
  };
  const kill = (r: Rig): bigint => sym(r.g, "__x64_sys_kill") + 4n; // a critical page: checked every sweep
  // ftrace_caller and ftrace_regs_caller are what ftrace writes there: explained.
  for (const ok of ["ftrace_caller", "ftrace_regs_caller"]) {
    const r = rig();
    callAt(r, kill(r), sym(r.g, ok));
    assert.deepEqual(alarms(r.run()), [], ok);
  }
  const targets: [string, (r: Rig) => bigint][] = [
    ["another kernel function", (r) => sym(r.g, "late_text_function")],
    ["a module's code", (r) => (r.g.modules[0] as { address: bigint }).address + 0x1000n],
    ["module-area memory no ftrace_ops owns", () => 0xffff_ffff_c020_0000n],
  ];
  for (const [what, to] of targets) {
    const r = rig();
    r.g.addFtraceOps(0xffff_ffff_c010_0000n);
    callAt(r, kill(r), to(r));
    const f = r.run().findings.filter((x) => x.check === "kernel-text");
    assert.equal(f.length, 1, what);
    assert.match(JSON.stringify(f[0]?.evidence), /neither ftrace_caller, ftrace_regs_caller nor a trampoline/, what);
  }
  // A BPF trampoline an ops calls directly (register_ftrace_direct): accepted.
  const d = rig();
  d.g.addFtraceOps(0n, 0, 0xffff_ffff_c018_0000n);
  callAt(d, kill(d), 0xffff_ffff_c018_0000n);
  assert.deepEqual(alarms(d.run()), []);
  // A trampoline stops being accepted once its ops is gone from ftrace_ops_list (or the list is broken).
  const r = rig();
  r.g.addFtraceOps(0xffff_ffff_c010_0000n);
  callAt(r, kill(r), 0xffff_ffff_c010_0000n);
  assert.deepEqual(alarms(r.run()), []);
  r.g.writeVa(sym(r.g, "ftrace_ops_list"), Buffer.alloc(8));
  // ftrace_shutdown() unlinks the ops before it NOPs the sites: a trampoline seen on the list stays acceptable
  // for TRAMPOLINE_GRACE_SWEEPS sweeps, then the call is a finding.
  for (let i = 0; i < TRAMPOLINE_GRACE_SWEEPS; i++) assert.deepEqual(alarms(r.run()), [], `grace sweep ${i + 1}`);
  const rep = r.run();
  assert.deepEqual(alarms(rep), ["kernel-text"]);
  assert.ok(rep.coverage.skipped.some((x) => x.startsWith("ftrace trampolines")), JSON.stringify(rep.coverage.skipped));
});

test("new kernel taint flags and untrusted module loads are medium findings; any load under no-new-modules is high", () => {
  const r = rig();
  assert.deepEqual(alarms(r.run()), []);
  // A signed in-tree module loaded after the baseline: nothing without the policy, high with it.
  r.g.loadModule("nf_tables", { taints: 0n, sigOk: true });
  assert.deepEqual(alarms(r.run()), []);
  let rep = r.run({}, { noNewModules: true });
  assert.deepEqual(alarms(rep), ["module-loaded"]);
  const loaded = rep.findings.find((x) => x.check === "module-loaded");
  assert.equal(loaded?.severity, "high");
  assert.equal(loaded?.evidence.module, "nf_tables");
  // An out-of-tree, unsigned module: TAINT_OOT_MODULE and TAINT_UNSIGNED_MODULE on the module and the kernel.
  r.g.loadModule("rootkit", { taints: (1n << 12n) | (1n << 13n), sigOk: false });
  r.g.taint((1n << 12n) | (1n << 13n));
  rep = r.run();
  const by = (c: CheckId): SweepReport["findings"] => rep.findings.filter((x) => x.check === c);
  assert.deepEqual(by("module-untrusted").map((x) => [x.severity, x.evidence.module, x.evidence.outOfTree, x.evidence.unsigned]), [["medium", "rootkit", true, true]]);
  assert.deepEqual(by("kernel-taint").map((x) => [x.severity, x.evidence.flag]), [["medium", "OOT_MODULE"], ["medium", "UNSIGNED_MODULE"]]);
  assert.match(by("kernel-taint")[0]?.message ?? "", /TAINT_OOT_MODULE \('O'\)/);
  assert.deepEqual(by("module-loaded"), [], "no policy: no module-loaded");
  rep = r.run({}, { noNewModules: true });
  assert.deepEqual(rep.findings.filter((x) => x.check === "module-loaded").map((x) => x.evidence.module).sort(), ["nf_tables", "rootkit"]);
  // A module unloaded and loaded again at the very same address (what the allocator does) is still a new load:
  // its /sys/module directory is a new kernfs node with a new id.
  const r2 = rig();
  const button = r2.g.modules.find((m) => m.name === "button") as { address: bigint };
  assert.deepEqual(alarms(r2.run({}, { noNewModules: true })), []);
  const kobj = button.address + BigInt(LAYOUT.module.mkobj + LAYOUT.mkobj.kobj);
  const sd = r2.g.readVa(kobj + BigInt(LAYOUT.kobject.sd), 8).readBigUInt64LE(0);
  const id = Buffer.alloc(8);
  id.writeBigUInt64LE(0x9999n);
  r2.g.writeVa(sd + BigInt(LAYOUT.kernfsNode.id), id);
  assert.deepEqual(r2.run({}, { noNewModules: true }).findings.filter((x) => x.check === "module-loaded").map((x) => x.evidence.module), ["button"]);
  // A baseline of an older version (no taint, no module list) is still usable, without these checks.
  const old = { ...r.baseline } as Record<string, unknown>;
  delete old.taintedMask;
  delete old.modules;
  const out = sweep({ model: r.model, phys: r.g.mem, regs: r.g.regs }, old as unknown as Baseline, undefined, { noNewModules: true });
  assert.deepEqual(out.report.findings.filter((x) => ["kernel-taint", "module-loaded", "module-untrusted"].includes(x.check)), []);
});

test("rodata and page permissions: a changed constant, a writable text page, text remapped", () => {
  const r = rig();
  const passes = r.run().coverage.fullPassEverySweeps;
  r.g.writeVa(sym(r.g, "fair_sched_class") + 8n, [1, 2, 3]);
  let all: CheckId[] = [];
  for (let i = 0; i <= passes; i++) all = all.concat(alarms(r.run()));
  assert.ok(all.includes("kernel-rodata"));
  // Make the first 2 MiB text page writable in the kernel page tables.
  const r2 = rig();
  const root = r2.model.kernelRoot;
  let table = root.base;
  const va = sym(r2.g, "_stext");
  for (let level = root.levels; level > 2; level--) {
    const idx = (va >> BigInt(12 + 9 * (level - 1))) & 0x1ffn;
    table = r2.g.ram.readBigUInt64LE(Number(table + idx * 8n)) & 0x000f_ffff_ffff_f000n;
  }
  const at = Number(table + ((va >> 21n) & 0x1ffn) * 8n);
  const pde = r2.g.ram.readBigUInt64LE(at);
  r2.g.ram.writeBigUInt64LE(pde | 2n, at);
  let f = r2.run().findings.filter((x) => x.check === "page-permissions");
  assert.equal(f[0]?.evidence.problem, "writable");
  assert.equal(f[0]?.evidence.region, "text");
  // Remapped onto another frame (a modified copy would pass every hash of the original page).
  r2.g.ram.writeBigUInt64LE((pde & ~0x000f_ffff_ffe0_0000n) | 0x140_0000n, at);
  f = r2.run().findings.filter((x) => x.check === "page-permissions");
  assert.ok(f.some((x) => x.evidence.problem === "remapped"), JSON.stringify(f));
  // NX on text.
  r2.g.ram.writeBigUInt64LE(pde | (1n << 63n), at);
  f = r2.run().findings.filter((x) => x.check === "page-permissions");
  assert.ok(f.some((x) => x.evidence.problem === "not-executable"));
});

test("a process unlinked from the task list is hidden-process on the second sweep, and only while hidden", () => {
  const r = rig();
  r.run();
  const victim = locateTask(r.model, 13);
  assert.ok(victim);
  const u = unlinkTask(r.model, r.g.writer, victim);
  const first = r.run();
  assert.deepEqual(alarms(first), [], "one sweep could be a race: wait for confirmation");
  assert.equal(first.coverage.pendingConfirmation, 1);
  assert.deepEqual(first.processes.find((p) => p.pid === 13)?.sources, ["pid-table"]);
  const second = r.run();
  const f = second.findings.find((x) => x.check === "hidden-process");
  assert.ok(f);
  assert.equal(f.evidence.pid, 13);
  assert.equal(f.severity, "critical");
  assert.ok(relinkListNode(r.model, r.g.writer, u));
  assert.deepEqual(alarms(r.run()), []);
  assert.equal(r.run().coverage.pendingConfirmation, 0);
});

test("a process gone from both the task list and the PID table is still found by the carve", () => {
  const r = rig();
  const victim = locateTask(r.model, 14);
  assert.ok(victim);
  unlinkTask(r.model, r.g.writer, victim);
  // Clear its PID-table slot but keep it attached (thread_pid and struct pid still point at each other).
  const ns = sym(r.g, "init_pid_ns");
  const head = r.g.readVa(ns + 8n, 8).readBigUInt64LE(0) - 2n;
  let node = head;
  for (;;) {
    const shift = r.g.readVa(node, 1)[0] as number;
    const slot = BigInt(Math.floor(14 / 2 ** shift) % 64);
    const at = node + BigInt(LAYOUT.xaNode.slots) + slot * 8n;
    if (shift === 0) {
      r.g.writeVa(at, Buffer.alloc(8));
      break;
    }
    node = r.g.readVa(at, 8).readBigUInt64LE(0) - 2n;
  }
  assert.deepEqual(alarms(r.run()), [], "neither the list nor the PID table shows it");
  const carved = r.run({}, { carve: true });
  assert.deepEqual(carved.processes.find((p) => p.pid === 14)?.sources, ["carve"]);
  // The next sweep re-reads the pending task directly (no carve needed) and confirms.
  const rep = r.run();
  assert.equal(rep.findings.find((x) => x.check === "hidden-process")?.evidence.sources, "carve");
});

test("a process reaped between two walks is not hidden; a task list that cannot be walked concludes nothing", () => {
  const r = rig();
  r.run();
  const t = r.g.spawn(777, "shortlived");
  r.run();
  r.g.reap(t);
  assert.deepEqual(alarms(r.run()), []);
  // Break the task list: hidden-process is skipped (said so), never guessed.
  const init = sym(r.g, "init_task");
  r.g.writeVa(init + BigInt(LAYOUT.task.tasks), Buffer.from("0000000000000000", "hex"));
  const rep = r.run();
  assert.equal(rep.coverage.taskListComplete, false);
  assert.ok(!alarms(rep).includes("hidden-process"));
  assert.ok(rep.coverage.skipped.some((s) => s.startsWith("hidden-process")));
  assert.deepEqual(alarms(rep), [], "once could be a race with the guest");
  // Broken a second time in a row: the structure is damaged, and the blindness is a finding.
  const again = r.run();
  const f = again.findings.find((x) => x.check === "structure-unreadable");
  assert.equal(f?.evidence.structure, "task-list");
  assert.equal(f?.severity, "high");
});

test("guest view: a process missing from the guest's ps alarms only when VMI saw it before and after the ps", () => {
  const r = rig();
  const ps = (): { pid: number; ppid: number; comm: string }[] => r.g.tasks.filter((t) => t.pid !== 0 && t.pid === t.tgid).map((t) => ({ pid: t.pid, ppid: 1, comm: t.comm }));
  // First sweep with a guest view: nothing to bracket it with yet.
  const liar = ps().filter((p) => p.pid !== 12);
  let rep = r.run({ guestProcesses: liar });
  assert.equal(rep.coverage.guestViewDeferred, true);
  assert.deepEqual(alarms(rep), []);
  // Sweep, ps (lying), sweep: the process existed throughout.
  rep = r.run({ guestProcesses: liar });
  const f = rep.findings.find((x) => x.check === "process-hidden-from-guest");
  assert.equal(f?.evidence.pid, 12);
  assert.equal(rep.processes.find((p) => p.pid === 12)?.inGuestView, false);
  assert.equal(rep.processes.find((p) => p.pid === 1)?.inGuestView, true);
  assert.equal(rep.processes.find((p) => p.pid === 6000)?.inGuestView, undefined, "threads are not in ps");
  // The race: a process started after the guest's ps (and after the previous sweep) is not in ps: no alarm.
  const before = ps();
  r.g.spawn(888, "racer");
  rep = r.run({ guestProcesses: before });
  assert.deepEqual(alarms(rep), []);
  assert.equal(rep.processes.find((p) => p.pid === 888)?.inGuestView, false);
  // A process that exited between the previous sweep and the ps is simply gone: no alarm either.
  const gone = r.g.spawn(889, "exiting");
  r.run({ guestProcesses: [...ps()] });
  r.g.reap(gone);
  assert.deepEqual(alarms(r.run({ guestProcesses: ps().filter((p) => p.pid !== 889) })), []);
});

test("a module unlinked from modules is hidden-module on the second sweep; /proc/modules lying is module-hidden-from-guest", () => {
  const r = rig();
  r.run();
  const mod = locateModule(r.model, "button");
  assert.ok(mod);
  const u = unlinkModule(r.model, r.g.writer, mod);
  assert.deepEqual(alarms(r.run()), []);
  const f = r.run().findings.find((x) => x.check === "hidden-module");
  assert.equal(f?.evidence.module, "button");
  assert.ok(relinkListNode(r.model, r.g.writer, u));
  assert.deepEqual(alarms(r.run()), []);
  const names = r.g.modules.map((m) => m.name);
  r.run({ guestModules: names });
  const rep = r.run({ guestModules: names.filter((n) => n !== "failover") });
  assert.equal(rep.findings.find((x) => x.check === "module-hidden-from-guest")?.evidence.module, "failover");
  assert.equal(rep.modules.find((m) => m.name === "failover")?.inGuestView, false);
});

test("a module unlinked from both the list and the kset is found by the carve and confirmed without one", () => {
  const r = rig();
  const mod = locateModule(r.model, "failover");
  assert.ok(mod);
  unlinkModule(r.model, r.g.writer, mod);
  // kobject.entry of its module_kobject, off the kset list too.
  const entry = mod.address + BigInt(LAYOUT.module.mkobj + LAYOUT.mkobj.kobj + LAYOUT.kobject.entry);
  const next = r.g.readVa(entry, 8).readBigUInt64LE(0);
  const prev = r.g.readVa(entry + 8n, 8).readBigUInt64LE(0);
  r.g.writeVa(prev, Buffer.from(new BigUint64Array([next]).buffer));
  r.g.writeVa(next + 8n, Buffer.from(new BigUint64Array([prev]).buffer));
  assert.deepEqual(alarms(r.run()), [], "invisible to both walks");
  const carved = r.run({}, { carve: true });
  assert.deepEqual(carved.modules.find((m) => m.name === "failover")?.sources, ["carve"]);
  const f = r.run().findings.find((x) => x.check === "hidden-module");
  assert.equal(f?.evidence.sources, "carve");
});

test("a baseline of another boot is a baseline-mismatch, and the comparisons are skipped", () => {
  const r = rig();
  const other = buildSyntheticKernel({ shift: 0x1e00_0000n });
  const model = buildKernelModel(other.mem, { cr3: (other.regs[0] as { cr3: bigint }).cr3, cr4: (other.regs[0] as { cr4: bigint }).cr4 });
  const rep = sweep({ model, phys: other.mem, regs: other.regs }, r.baseline).report;
  assert.deepEqual(alarms(rep), ["baseline-mismatch"]);
  assert.ok(rep.coverage.skipped.length > 0);
  assert.ok(rep.processes.length > 0, "the cross-view checks still run");
});

test("findings are capped, and bad baselines or states are typed errors", () => {
  const r = rig();
  for (let nr = 0; nr < 40; nr++) overwriteSyscall(r.model, r.g.writer, nr, sym(r.g, "late_text_function"));
  const rep = r.run({}, { maxFindings: 5 });
  assert.equal(rep.findings.length, 6);
  assert.equal(rep.findings[5]?.check, "findings-truncated");
  const bad = (b: unknown, s?: unknown): void =>
    assert.throws(() => sweep({ model: r.model, phys: r.g.mem, regs: r.g.regs }, b as Baseline, s as SweepState), (e: unknown) => e instanceof IntrospectionError && e.reason === "host-input");
  bad({ ...r.baseline, format: 2 });
  bad({ ...r.baseline, syscalls: { table: "nope", entries: [] } });
  bad({ ...r.baseline, text: { ...r.baseline.text, pageHashes: "AAAA" } });
  bad(r.baseline, { format: 1, sweeps: -1 });
  bad(r.baseline, { ...initialSweepState(), brokenWalks: ["everything"] });
  assert.throws(() => sweep({ model: r.model, phys: r.g.mem, regs: [] }, r.baseline), IntrospectionError);
});

test("stateLetter follows /proc's letters", () => {
  assert.deepEqual([stateLetter(0, 0), stateLetter(1, 0), stateLetter(2, 0), stateLetter(0x402, 0), stateLetter(4, 0), stateLetter(1, 16), stateLetter(0, 32), stateLetter(0x2001, 0)], ["R", "S", "D", "I", "T", "Z", "X", "S"]);
});

test("the carve runs when asked or every N sweeps", () => {
  const r = rig();
  const carved = [1, 2, 3, 4, 5].map(() => r.run({}, { carveEverySweeps: 2 }).coverage.carved);
  assert.deepEqual(carved, [true, false, true, false, true]);
  assert.equal(r.run({}, { carve: true }).carve?.truncated, false);
});
