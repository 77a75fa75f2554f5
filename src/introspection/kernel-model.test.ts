import { test } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { IntrospectionError } from "./errors.ts";
import { MODEL_CACHE_BUILDS, buildKernelModel, summarizeModel, type KernelModel, type KernelModelCache } from "./kernel-model.ts";
import { BufferPhysicalMemory } from "./physical-memory.ts";
import { BTF_FACTS, buildSyntheticGuest, type SyntheticGuest } from "./testing/synthetic-guest.ts";

const alerts = (m: KernelModel): string[] => m.disagreements.filter((d) => d.severity !== "info").map((d) => d.check);

function expectFaithful(m: KernelModel, g: SyntheticGuest): void {
  assert.equal(m.release, "6.12.117+deb12-cloud-amd64");
  assert.deepEqual(m.version, [6, 12, 117]);
  assert.equal(m.kaslrShift, g.shift);
  assert.equal(m.physBase, g.physBase);
  assert.equal(m.pagingLevels, g.levels);
  assert.equal(m.kernelRoot.base, g.root);
  assert.equal(m.symbols.count, g.symbols.length);
  for (const s of g.symbols) assert.ok(m.symbols.lookupAll(s.name).some((x) => x.address === s.address), s.name);
  assert.equal(m.btf?.structMemberOffset("task_struct", "tasks"), BTF_FACTS["task_struct.tasks"]);
  assert.equal(m.btf?.structMemberOffset("mm_struct", "pgd"), BTF_FACTS["mm_struct.pgd"]);
  assert.deepEqual(m.kallsymsChecks.markers, "ok");
  assert.deepEqual(m.kallsymsChecks.seqsOfNames, "ok");
  // The kernel address space works: read init_task's page through swapper_pg_dir.
  assert.ok(m.kernel.read(m.symbols.address("init_task") as bigint, 64));
}

for (const levels of [4, 5] as const) {
  test(`a faithful ${levels}-level guest gives a faithful model and no disagreement`, () => {
    const g = buildSyntheticGuest({ levels });
    const m = buildKernelModel(g.mem, { cr3: g.cr3, cr4: g.cr4, independentCarve: true });
    expectFaithful(m, g);
    assert.equal(m.vmcoreinfoAt, g.vmcoreinfoAt);
    assert.deepEqual(alerts(m), []);
    const s = summarizeModel(m);
    assert.equal(s.kaslrShift, "0x" + g.shift.toString(16));
  });
}

test("CR4.LA57 overrules a lying pgtable_l5_enabled, and the lie is reported", () => {
  const g = buildSyntheticGuest({ levels: 5, vmcoreinfo: { "NUMBER(pgtable_l5_enabled)": "0" } });
  const m = buildKernelModel(g.mem, { cr4: g.cr4 });
  assert.equal(m.pagingLevels, 5);
  assert.deepEqual(alerts(m), ["paging-levels"]);
  // Without CR4 the page tables themselves decide, and the lie is still reported.
  const n = buildKernelModel(g.mem);
  assert.equal(n.pagingLevels, 5);
  assert.deepEqual(alerts(n), ["paging-levels"]);
});

test("a lying KERNELOFFSET is a disagreement with what kallsyms implies, not a crash", () => {
  const g = buildSyntheticGuest({ vmcoreinfo: { KERNELOFFSET: "1000000" } });
  const m = buildKernelModel(g.mem);
  assert.ok(alerts(m).includes("kaslr-shift"));
  // A System.map for the build settles the shift.
  const withMap = buildKernelModel(g.mem, { systemMap: new Map([["_stext", 0xffff_ffff_8100_0000n]]) });
  assert.equal(withMap.kaslrShift, g.shift);
  assert.ok(withMap.disagreements.some((d) => d.check === "kaslr-shift" && /System\.map/.test(d.message)));
});

test("SYMBOL() values that kallsyms contradicts are reported", () => {
  const g = buildSyntheticGuest({ vmcoreinfo: { "SYMBOL(_stext)": "ffffffffad201000" } });
  const m = buildKernelModel(g.mem);
  assert.ok(m.disagreements.some((d) => d.check === "symbol-vs-vmcoreinfo" && d.message.includes("SYMBOL(_stext)")));
});

test("OFFSET() values that BTF contradicts are reported", () => {
  const g = buildSyntheticGuest({ vmcoreinfo: { "OFFSET(list_head.prev)": "16" } });
  const m = buildKernelModel(g.mem);
  assert.deepEqual(alerts(m), ["btf-vs-vmcoreinfo"]);
});

test("a lying phys_base in every copy falls back to the independent carve", () => {
  const g = buildSyntheticGuest({ vmcoreinfo: { "NUMBER(phys_base)": "-1073741824" } });
  const m = buildKernelModel(g.mem);
  expectFaithful(m, g);
  assert.equal(m.vmcoreinfo, undefined);
  assert.ok(alerts(m).includes("vmcoreinfo-unusable"));
});

test("differing VMCOREINFO copies are reported; the model still gets built", () => {
  const g = buildSyntheticGuest();
  // Corrupt the note copy's KERNELOFFSET only.
  const at = g.ram.indexOf("KERNELOFFSET=2c200000", Number(g.noteAt), "latin1");
  g.ram.write("KERNELOFFSET=2c400000", at, "latin1");
  const m = buildKernelModel(g.mem);
  expectFaithful(m, g);
  assert.deepEqual(alerts(m), ["vmcoreinfo-copies"]);
});

test("without VMCOREINFO the model comes from the kallsyms carve and linux_banner", () => {
  const g = buildSyntheticGuest({ withVmcoreinfo: false });
  const m = buildKernelModel(g.mem, { cr4: g.cr4 });
  expectFaithful(m, g);
  assert.equal(m.buildId, undefined);
  assert.deepEqual(alerts(m), ["vmcoreinfo-missing"]);
  const n = buildKernelModel(g.mem);
  assert.equal(n.pagingLevels, 5, "paging mode inferred from the page tables");
});

test("kernels before 6.2 are refused with a typed error", () => {
  const g = buildSyntheticGuest({ vmcoreinfo: { OSRELEASE: "5.15.0-91-generic" } });
  assert.throws(() => buildKernelModel(g.mem), (e: unknown) => e instanceof IntrospectionError && e.reason === "unsupported" && /5\.15\.0-91-generic/.test(e.message));
});

test("a corrupt BTF blob costs the types, not the model", () => {
  const g = buildSyntheticGuest();
  const start = g.symbols.find((s) => s.name === "__start_BTF")?.address as bigint;
  g.ram.writeUInt16LE(0x1234, Number(start - g.text + 0x100_0000n));
  const m = buildKernelModel(g.mem);
  assert.equal(m.btf, undefined);
  assert.deepEqual(alerts(m), ["btf-malformed"]);
  assert.equal(buildKernelModel(g.mem, { btf: "none" }).btf, undefined);
  assert.equal(buildKernelModel(g.mem, { btf: g.btf }).btf?.structSize("task_struct"), BTF_FACTS.sizeof_task_struct);
});

test("models are cached by build id and re-placed for another boot's KASLR shift", () => {
  const cache: KernelModelCache = new Map();
  const g1 = buildSyntheticGuest();
  const first = buildKernelModel(g1.mem, { cache });
  assert.equal(first.fromCache, false);
  assert.equal(cache.size, 1);
  const again = buildKernelModel(g1.mem, { cache, vmcoreinfoHint: first.vmcoreinfoAt as bigint });
  assert.equal(again.fromCache, true);
  assert.equal(again.symbols.count, first.symbols.count);
  // Same build, other placement.
  const g2 = buildSyntheticGuest({ shift: 0x1e00_0000n });
  const moved = buildKernelModel(g2.mem, { cache });
  assert.equal(moved.fromCache, true);
  expectFaithful(moved, g2);
  assert.deepEqual(alerts(moved), []);
  // Same build id, different tables: not trusted from the cache.
  const g3 = buildSyntheticGuest({ fillerSymbols: 701 });
  const other = buildKernelModel(g3.mem, { cache });
  assert.equal(other.fromCache, false);
  assert.ok(alerts(other).includes("cache-mismatch"));
  expectFaithful(other, g3);
});

test("a stale or wrong VMCOREINFO hint falls back to a scan", () => {
  const g = buildSyntheticGuest();
  const m = buildKernelModel(g.mem, { vmcoreinfoHint: 0x123_4567n });
  assert.equal(m.vmcoreinfoAt, g.vmcoreinfoAt);
});

test("fuzz: corrupting guest memory yields a model or an IntrospectionError, never anything else", () => {
  const g = buildSyntheticGuest({ fillerSymbols: 300 });
  const pristine = Buffer.from(g.ram);
  // Hot spots: the VMCOREINFO page, the kallsyms tables, the page tables, the BTF blob.
  const spots = [
    [Number(g.vmcoreinfoAt), g.vmcoreinfoText.length],
    [Number(g.noteAt) - 24, g.vmcoreinfoText.length + 24],
    [Number(g.kallsymsPhys), g.kallsyms.bytes.length],
    [Number(g.root), 0x6000],
    [Number(g.kallsymsPhys) + ((g.kallsyms.bytes.length + 4095) & ~4095) + 0x1000, g.btf.length],
  ] as const;
  fc.assert(
    fc.property(
      fc.array(fc.record({ spot: fc.nat({ max: spots.length - 1 }), at: fc.nat(), value: fc.integer({ min: 0, max: 255 }) }), { minLength: 1, maxLength: 20 }),
      fc.boolean(),
      (edits, withCr) => {
        const ram = Buffer.from(pristine);
        for (const e of edits) {
          const [start, len] = spots[e.spot] as readonly [number, number];
          ram[start + (e.at % len)] = e.value;
        }
        try {
          const m = buildKernelModel(new BufferPhysicalMemory(ram), withCr ? { cr3: g.cr3, cr4: g.cr4 } : {});
          assert.ok(m.symbols.count > 0);
        } catch (err) {
          assert.ok(err instanceof IntrospectionError, String(err));
        }
      },
    ),
    { numRuns: 60 },
  );
});

test("the model cache keeps at most MODEL_CACHE_BUILDS builds, the oldest going first: made-up build ids cannot grow it", () => {
  const cache: KernelModelCache = new Map();
  const ids = Array.from({ length: MODEL_CACHE_BUILDS + 3 }, (_, i) => i.toString(16).padStart(40, "0"));
  for (const buildId of ids) buildKernelModel(buildSyntheticGuest({ buildId }).mem, { cache });
  assert.equal(cache.size, MODEL_CACHE_BUILDS);
  assert.deepEqual([...cache.keys()], ids.slice(3));
});
