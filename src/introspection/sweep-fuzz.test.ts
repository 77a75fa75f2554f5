import { test } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { IntrospectionError } from "./errors.ts";
import { buildKernelModel } from "./kernel-model.ts";
import { sweep, takeBaseline, type Baseline, type SweepState } from "./sweep.ts";
import { buildSyntheticKernel } from "./testing/synthetic-kernel.ts";

// A hostile guest: whatever its memory holds, a sweep returns a bounded report or throws IntrospectionError, and
// finishes in bounded time. Mutations hit random bytes and the structures the walkers follow (task list, struct
// pids, the PID xarray, modules and the kset, ftrace records, the IDT, the syscall table, text, page tables).

const g = buildSyntheticKernel({ levels: 5, processes: 8 });
const pristine = Buffer.from(g.ram);
const cpu = g.regs[0] as (typeof g.regs)[number];
const model = buildKernelModel(g.mem, { cr3: cpu.cr3, cr4: cpu.cr4 });
const baseline = takeBaseline({ model, phys: g.mem, regs: g.regs });
const baselineJson = JSON.stringify(baseline);
const MAX_FINDINGS = 50;
const TIME_BOUND_MS = 5000;

/** Values a rootkit or a corrupted guest would put in pointer fields. */
const pointerish = fc.oneof(
  fc.constant(0n),
  fc.constant((1n << 64n) - 1n),
  fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }),
  fc.constantFrom(...g.tasks.map((t) => t.address), ...g.modules.map((m) => m.address), g.directMapBase, g.directMapBase + 0x180_0002n, g.text.start, 2n, 0x1002n, 0x4002n),
  fc.integer({ min: -4096, max: 4096 }).map((d) => BigInt.asUintN(64, (g.tasks[3]?.address ?? 0n) + BigInt(d))),
);

const edit = fc.record({
  spot: fc.nat({ max: g.hotspots.length }),
  at: fc.nat(),
  kind: fc.constantFrom("byte", "u64", "u32", "field", "field"),
  byte: fc.integer({ min: 0, max: 255 }),
  u64: pointerish,
  u32: fc.integer({ min: -1, max: 0x7fff_ffff }),
});

interface Edit {
  spot: number;
  at: number;
  kind: string;
  byte: number;
  u64: bigint;
  u32: number;
}

function apply(ram: Buffer, edits: readonly Edit[]): void {
  for (const e of edits) {
    const spot = g.hotspots[e.spot];
    // Past the hotspots: anywhere in RAM.
    const start = spot ? spot.start : 0;
    const len = spot ? Math.max(1, spot.length) : ram.length;
    let at = start + (e.at % len);
    if (e.kind === "field") {
      // A pointer or number field the walkers follow: a pointer-ish value, or a small number.
      at = g.fields[e.at % g.fields.length] as number;
      if (e.byte & 1) ram.writeBigUInt64LE(e.u64, at);
      else ram.writeInt32LE(e.u32, at);
    } else if (e.kind === "byte") ram[at] = e.byte;
    else if (e.kind === "u64") {
      at = Math.min(ram.length - 8, at & ~7);
      ram.writeBigUInt64LE(e.u64, at);
    } else {
      at = Math.min(ram.length - 4, at & ~3);
      ram.writeInt32LE(e.u32, at);
    }
  }
}

function checkReport(run: () => { report: { findings: unknown[]; processes: unknown[]; modules: unknown[] }; state: SweepState }): SweepState | undefined {
  const t0 = performance.now();
  try {
    const { report, state } = run();
    assert.ok(report.findings.length <= MAX_FINDINGS + 1, `${report.findings.length} findings`);
    assert.ok(report.processes.length <= 65_536 && report.modules.length <= 8192);
    JSON.stringify(report, (_k, v: unknown) => (typeof v === "bigint" ? String(v) : v));
    return state;
  } catch (err) {
    assert.ok(err instanceof IntrospectionError, `unexpected ${String(err)}\n${(err as Error).stack ?? ""}`);
    return undefined;
  } finally {
    assert.ok(performance.now() - t0 < TIME_BOUND_MS, `a sweep took ${Math.round(performance.now() - t0)} ms`);
  }
}

test("fuzz: mutated guest memory after the baseline never makes a sweep throw, hang or overflow", () => {
  fc.assert(
    fc.property(fc.array(edit, { minLength: 1, maxLength: 40 }), fc.boolean(), fc.boolean(), (edits, carve, withGuestView) => {
      pristine.copy(g.ram);
      apply(g.ram, edits);
      const guest = withGuestView ? { guestProcesses: [{ pid: 1, ppid: 0, comm: "init" }], guestModules: ["button"] } : {};
      let state: SweepState | undefined;
      for (let i = 0; i < 2; i++) {
        state = checkReport(() => sweep({ model, phys: g.mem, regs: g.regs, ...guest }, baseline, state, { carve: carve && i === 0, maxFindings: MAX_FINDINGS }));
      }
    }),
    { numRuns: 120 },
  );
  pristine.copy(g.ram);
});

test("fuzz: a hostile guest at baseline time yields a baseline or an IntrospectionError, and sweeps against it stay bounded", () => {
  fc.assert(
    fc.property(fc.array(edit, { minLength: 1, maxLength: 25 }), (edits) => {
      pristine.copy(g.ram);
      apply(g.ram, edits);
      let b: Baseline;
      let m;
      try {
        m = buildKernelModel(g.mem, { cr3: cpu.cr3, cr4: cpu.cr4 });
        b = takeBaseline({ model: m, phys: g.mem, regs: g.regs });
      } catch (err) {
        assert.ok(err instanceof IntrospectionError, `unexpected ${String(err)}`);
        return;
      }
      // The baseline is JSON, and a sweep of the same memory against it (and of pristine memory) is bounded.
      const copy = JSON.parse(JSON.stringify(b)) as Baseline;
      checkReport(() => sweep({ model: m, phys: g.mem, regs: g.regs }, copy, undefined, { maxFindings: MAX_FINDINGS }));
      pristine.copy(g.ram);
      checkReport(() => sweep({ model: m, phys: g.mem, regs: g.regs }, copy, undefined, { maxFindings: MAX_FINDINGS }));
    }),
    { numRuns: 40 },
  );
  pristine.copy(g.ram);
});

test("fuzz: a tampered stored baseline is refused with an IntrospectionError or used safely", () => {
  const paths: ((b: Record<string, unknown>, v: unknown) => void)[] = [
    (b, v) => ((b.idt as Record<string, unknown>).gates = v),
    (b, v) => ((b.idt as Record<string, unknown>).base = v),
    (b, v) => ((b.syscalls as Record<string, unknown>).entries = v),
    (b, v) => ((b.text as Record<string, unknown>).pageHashes = v),
    (b, v) => ((b.text as Record<string, unknown>).blockCrcs = v),
    (b, v) => ((b.text as Record<string, unknown>).criticalPages = v),
    (b, v) => ((b.text as Record<string, unknown>).regions = v),
    (b, v) => ((b.text as Record<string, unknown>).keptPages = v),
    (b, v) => ((b.text as { sites: Record<string, unknown> }).sites.count = v),
    (b, v) => ((b.text as { sites: Record<string, unknown> }).sites.offsets = v),
    (b, v) => (b.directMapBase = v),
    (b, v) => ((b.kernel as Record<string, unknown>).kaslrShift = v),
  ];
  fc.assert(
    fc.property(fc.nat({ max: paths.length - 1 }), fc.jsonValue(), (which, value) => {
      const b = JSON.parse(baselineJson) as Record<string, unknown>;
      (paths[which] as (typeof paths)[number])(b, value);
      checkReport(() => sweep({ model, phys: g.mem, regs: g.regs }, b as unknown as Baseline, undefined, { maxFindings: MAX_FINDINGS }));
    }),
    { numRuns: 150 },
  );
});
