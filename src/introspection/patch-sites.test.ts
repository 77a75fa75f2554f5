import { test } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { IntrospectionError } from "./errors.ts";
import { buildKernelModel } from "./kernel-model.ts";
import { kernelLayout } from "./kernel-layout.ts";
import { PATCH_KINDS, PatchSiteTable, collectPatchSites, judgeSite, normalise, type PatchSite, type TargetPolicy } from "./patch-sites.ts";
import { buildSyntheticKernel } from "./testing/synthetic-kernel.ts";

const TEXT = 0xffff_ffff_8100_0000n;
/** Function starts every 0x100 bytes in the first MiB of "text"; the module area as on x86-64. */
const policy: TargetPolicy = {
  isFunctionStart: (a) => a >= TEXT && a < TEXT + 0x10_0000n && (a & 0xffn) === 0n,
  moduleArea: { start: 0xffff_ffff_c000_0000n, end: 0xffff_ffff_ff00_0000n },
  // "ftrace_caller" at +0x200, "ftrace_regs_caller" at +0x300, one registered ops trampoline in the module area.
  isFtraceTarget: (a) => a === TEXT + 0x200n || a === TEXT + 0x300n || a === 0xffff_ffff_c040_0000n,
};
const NOP5 = [0x0f, 0x1f, 0x44, 0x00, 0x00];
const rel = (op: number, at: bigint, to: bigint): Buffer => {
  const b = Buffer.alloc(5);
  b[0] = op;
  b.writeInt32LE(Number(to - (at + 5n)), 1);
  return b;
};
const site = (kind: PatchSite["kind"], address: bigint, original: number[], length: 2 | 5 = 5, target?: bigint): PatchSite => ({ kind, address, length, original: Buffer.from([...original, 0, 0, 0, 0, 0].slice(0, 5)), target });

test("ftrace sites: NOP, or a call to ftrace_caller / ftrace_regs_caller / a registered trampoline only", () => {
  const s = site("ftrace", TEXT + 0x104n, NOP5);
  assert.deepEqual(judgeSite(s, Buffer.from(NOP5), policy), { legit: true, same: true, target: undefined, foreign: false });
  assert.deepEqual(judgeSite(s, rel(0xe8, s.address, TEXT + 0x200n), policy), { legit: true, same: false, target: TEXT + 0x200n, foreign: false });
  assert.deepEqual(judgeSite(s, rel(0xe8, s.address, 0xffff_ffff_c040_0000n), policy), { legit: true, same: false, target: 0xffff_ffff_c040_0000n, foreign: true });
  assert.equal(judgeSite(s, rel(0xe8, s.address, TEXT + 0x208n), policy).legit, false);
  // A call to another kernel function start, or into module memory that is no registered trampoline: a hook.
  const other = judgeSite(s, rel(0xe8, s.address, TEXT + 0x400n), policy);
  assert.equal(other.legit, false);
  assert.match(other.legit ? "" : other.why, /neither ftrace_caller, ftrace_regs_caller nor a trampoline/);
  assert.equal(judgeSite(s, rel(0xe8, s.address, 0xffff_ffff_c050_0000n), policy).legit, false);
  assert.equal(judgeSite(s, rel(0xe8, s.address, TEXT - 0x4000_0000n), policy).legit, false);
  assert.equal(judgeSite(s, rel(0xe9, s.address, TEXT + 0x200n), policy).legit, false, "ftrace never writes a jmp");
  assert.equal(judgeSite(s, Buffer.from([0x90, 0x90, 0x90, 0x90, 0x90]), policy).legit, false);
  // text_poke_bp in progress: int3, then the old tail or the new one.
  assert.equal(judgeSite(s, Buffer.from([0xcc, ...NOP5.slice(1)]), policy).legit, true);
  const call = rel(0xe8, s.address, TEXT + 0x300n);
  call[0] = 0xcc;
  assert.equal(judgeSite(s, call, policy).legit, true);
  const bogus = rel(0xe8, s.address, TEXT + 0x400n);
  bogus[0] = 0xcc;
  assert.equal(judgeSite(s, bogus, policy).legit, false);
  // Static calls and the ftrace_call op site still call any function start.
  assert.equal(judgeSite(site("static-call", TEXT + 0x150n, NOP5), rel(0xe8, TEXT + 0x150n, TEXT + 0x400n), policy).legit, true);
});

test("jump labels: only a NOP or a jmp to exactly the entry's target, of the site's own size", () => {
  const j5 = site("jump-label", TEXT + 0x110n, NOP5, 5, TEXT + 0x140n);
  assert.equal(judgeSite(j5, rel(0xe9, j5.address, TEXT + 0x140n), policy).legit, true);
  assert.equal(judgeSite(j5, rel(0xe9, j5.address, TEXT + 0x144n), policy).legit, false);
  assert.equal(judgeSite(j5, rel(0xe8, j5.address, TEXT + 0x140n), policy).legit, false);
  const j2 = site("jump-label", TEXT + 0x120n, [0x66, 0x90], 2, TEXT + 0x130n);
  assert.equal(judgeSite(j2, Buffer.from([0xeb, 0x0e]), policy).legit, true);
  assert.equal(judgeSite(j2, Buffer.from([0xeb, 0x10]), policy).legit, false);
  assert.equal(judgeSite(j2, Buffer.from([0x66, 0x90]), policy).legit, true);
  assert.equal(judgeSite(j2, Buffer.from([0x0f, 0x0b]), policy).legit, false);
});

test("static calls: call/jmp to a function, NOP, ret, or xor %eax,%eax", () => {
  const c = site("static-call", TEXT + 0x150n, [...rel(0xe8, TEXT + 0x150n, TEXT + 0x400n)]);
  for (const ok of [rel(0xe8, c.address, TEXT + 0x500n), rel(0xe9, c.address, TEXT + 0x500n), Buffer.from(NOP5), Buffer.from([0xc3, 0xcc, 0xcc, 0xcc, 0xcc]), Buffer.from([0x2e, 0x2e, 0x2e, 0x31, 0xc0])]) {
    assert.equal(judgeSite(c, ok, policy).legit, true, ok.toString("hex"));
  }
  assert.equal(judgeSite(c, rel(0xe8, c.address, TEXT + 0x501n), policy).legit, false);
  assert.equal(judgeSite(site("ftrace-op", TEXT + 0x160n, [...rel(0xe8, TEXT + 0x160n, TEXT + 0x400n)]), Buffer.from(NOP5), policy).legit, false);
});

test("fuzz: any bytes at any site are judged without throwing", () => {
  fc.assert(
    fc.property(fc.constantFrom(...PATCH_KINDS), fc.uint8Array({ minLength: 5, maxLength: 5 }), fc.uint8Array({ minLength: 5, maxLength: 5 }), fc.boolean(), (kind, orig, cur, two) => {
      const s = site(kind, TEXT + 0x1000n, [...orig], two && kind === "jump-label" ? 2 : 5, TEXT + 0x1100n);
      const r = judgeSite(s, cur, policy);
      assert.equal(typeof r.legit, "boolean");
    }),
    { numRuns: 2000 },
  );
});

test("the packed table: sorted, deduplicated, range queries, a JSON round trip, malformed tables refused", () => {
  const sites = [site("ftrace", TEXT + 0x304n, NOP5), site("jump-label", TEXT + 0x10n, [0x66, 0x90], 2, TEXT + 0x40n), site("static-call", TEXT + 0x304n, NOP5), site("static-call-tramp", TEXT + 0xffen, NOP5)];
  const t = PatchSiteTable.from(TEXT, sites);
  assert.equal(t.count, 3);
  assert.deepEqual(t.countsByKind(), { ftrace: 1, "ftrace-op": 0, "jump-label": 1, "static-call": 0, "static-call-tramp": 1 });
  assert.deepEqual(t.overlapping(TEXT + 0x1000n, TEXT + 0x2000n).map((s) => s.address), [TEXT + 0xffen], "a site straddling the range start");
  assert.deepEqual(t.overlapping(TEXT, TEXT + 0x11n).map((s) => s.length), [2]);
  assert.deepEqual(t.overlapping(TEXT + 0x12n, TEXT + 0x304n), []);
  const back = PatchSiteTable.deserialize(JSON.parse(JSON.stringify(t.serialize())));
  for (let i = 0; i < t.count; i++) assert.deepEqual(back.site(i), t.site(i));
  const ser = t.serialize();
  for (const bad of [{ ...ser, count: 4 }, { ...ser, base: "nope" }, { ...ser, kinds: Buffer.from([9, 9, 9]).toString("base64") }, { ...ser, offsets: Buffer.alloc(12, 0).toString("base64") }, { ...ser, count: -1 }]) {
    assert.throws(() => PatchSiteTable.deserialize(bad), IntrospectionError);
  }
});

test("property: overlapping() finds exactly the sites a brute-force scan finds", () => {
  fc.assert(
    fc.property(fc.uniqueArray(fc.nat({ max: 20_000 }), { maxLength: 200 }), fc.nat({ max: 21_000 }), fc.nat({ max: 5000 }), (offs, a, len) => {
      const sites = offs.map((o, i) => site(i % 2 ? "ftrace" : "jump-label", TEXT + BigInt(o), NOP5, i % 3 === 0 ? 2 : 5, TEXT));
      const t = PatchSiteTable.from(TEXT, sites);
      const start = TEXT + BigInt(a);
      const end = start + BigInt(len);
      const want = sites
        .filter((s) => s.address < end && s.address + BigInt(s.length) > start)
        .map((s) => s.address)
        .sort((x, y) => (x < y ? -1 : 1));
      assert.deepEqual(t.overlapping(start, end).map((s) => s.address), want);
    }),
  );
});

test("normalise puts legitimately patched sites back and lists the others", () => {
  const base = Buffer.alloc(0x40, 0x90);
  const s1 = TEXT + 0x104n;
  Buffer.from(NOP5).copy(base, 4);
  const t = PatchSiteTable.from(TEXT + 0x100n, [site("ftrace", s1, NOP5), site("jump-label", TEXT + 0x110n, NOP5, 5, TEXT + 0x130n)]);
  Buffer.from(NOP5).copy(base, 0x10);
  const cur = Buffer.from(base);
  rel(0xe8, s1, TEXT + 0x200n).copy(cur, 4);
  rel(0xe9, TEXT + 0x110n, TEXT + 0x134n).copy(cur, 0x10);
  const n = normalise(cur, TEXT + 0x100n, TEXT + 0x100n, TEXT + 0x140n, t, policy);
  assert.deepEqual(n.patched, { ftrace: 1 });
  assert.deepEqual(n.normalised.subarray(0, 0x10), base.subarray(0, 0x10));
  assert.equal(n.illegitimate.length, 1);
  assert.match(n.illegitimate[0]?.why ?? "", /not its entry's target/);
  assert.throws(() => normalise(cur, TEXT + 0x100n, TEXT + 0xf0n, TEXT + 0x140n, t, policy), IntrospectionError);
});

test("collectPatchSites finds every site of the synthetic kernel from the kernel's own tables", () => {
  const g = buildSyntheticKernel();
  const cpu = g.regs[0] as (typeof g.regs)[number];
  const model = buildKernelModel(g.mem, { cr3: cpu.cr3, cr4: cpu.cr4 });
  const layout = kernelLayout(model);
  const text = layout.text as NonNullable<typeof layout.text>;
  const bytes = model.kernel.read(text.start, Number(text.end - text.start)) as Buffer;
  const c = collectPatchSites(model, text, bytes, layout.ftrace);
  assert.deepEqual(c.problems, []);
  assert.equal(c.unrecognised, 0);
  const got = Array.from({ length: c.table.count }, (_, i) => c.table.site(i)).map((s) => `${s.kind}@${s.address.toString(16)}/${s.length}${s.target ? ">" + s.target.toString(16) : ""}`);
  const want = [...g.sites]
    .sort((a, b) => (a.address < b.address ? -1 : 1))
    .map((s) => `${s.kind}@${s.address.toString(16)}/${s.length}${s.kind === "jump-label" && s.target ? ">" + s.target.toString(16) : ""}`);
  assert.deepEqual(got, want);
  // Without ftrace's layout (no BTF), the other kinds are still collected and the gap is said.
  const partial = collectPatchSites(model, text, bytes, undefined);
  assert.ok(partial.problems.some((p) => /ftrace/.test(p)));
  assert.equal(partial.table.countsByKind().ftrace, 0);
  assert.ok(partial.table.countsByKind()["jump-label"] > 0);
});
