import { test } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { IntrospectionError } from "./errors.ts";
import { carveKallsyms, checkKallsymsVersion, decodeKallsyms, kallsymsLayoutFromVmcoreinfo, type KallsymsLayout } from "./kallsyms.ts";
import { BufferPhysicalMemory } from "./physical-memory.ts";
import { buildKallsyms, type KallsymsImage, type SymbolSpec } from "./testing/synthetic-guest.ts";
import { parseVmcoreinfo } from "./vmcoreinfo.ts";

const TEXT = 0xffff_ffff_ad20_0000n;
const PLACE = 0x4_0000n;

function symbolSet(n: number): SymbolSpec[] {
  const syms: SymbolSpec[] = [
    { name: "fixed_percpu_data", type: "D", address: 0n, absolute: true },
    { name: "cpu_tss_rw", type: "D", address: 0x6000n, absolute: true },
    { name: "_text", type: "T", address: TEXT },
    { name: "_stext", type: "T", address: TEXT },
    { name: "__func__.7", type: "d", address: TEXT + 0x500n },
    { name: "__func__.7", type: "d", address: TEXT + 0x900n },
    { name: "long_" + "n".repeat(200), type: "t", address: TEXT + 0x1000n },
  ];
  for (let i = 0; i < n; i++) syms.push({ name: `sym_${(i * 7919) % 100003}`, type: "tTdDbBrR"[i % 8] as string, address: TEXT + 0x2000n + BigInt(i) * 0x10n });
  return syms;
}

function place(img: KallsymsImage, ramBytes = 4 * 1024 * 1024): { ram: Buffer; mem: BufferPhysicalMemory; layout: KallsymsLayout } {
  const ram = Buffer.alloc(ramBytes);
  img.bytes.copy(ram, Number(PLACE));
  return { ram, mem: new BufferPhysicalMemory(ram), layout: img.layout };
}

const build = (n = 900, absolutePercpu = true): KallsymsImage =>
  buildKallsyms(absolutePercpu ? symbolSet(n) : symbolSet(n).filter((s) => !s.absolute), { virtBase: PLACE, relativeBase: TEXT, absolutePercpu, tableSymbols: false });

for (const absolutePercpu of [true, false]) {
  test(`decodes every symbol of a 6.4+ table (absolute per-CPU encoding: ${absolutePercpu})`, () => {
    const img = build(900, absolutePercpu);
    const { mem, layout } = place(img);
    const d = decodeKallsyms(mem, layout, "6.12.117");
    assert.equal(d.table.count, img.symbols.length);
    assert.equal(d.table.absolutePercpu, absolutePercpu);
    assert.deepEqual(d.checks, { markers: "ok", seqsOfNames: "ok", addressesSorted: true, unusedTokens: d.checks.unusedTokens });
    assert.deepEqual(d.layout, img.layout, "markers and seqs_of_names found by position");
    const got = [...d.table.entries()].map((s) => [s.name, s.type, s.address]);
    assert.deepEqual(
      got,
      img.symbols.map((s) => [s.name, s.type, s.address]),
    );
    assert.equal(d.table.address("_stext"), TEXT);
    assert.equal(d.table.address("long_" + "n".repeat(200)), TEXT + 0x1000n);
    assert.equal(d.table.address("nope"), undefined);
    assert.equal(d.table.address(""), undefined);
    assert.deepEqual(
      d.table.lookupAll("__func__.7").map((s) => s.address),
      [TEXT + 0x500n, TEXT + 0x900n],
    );
    const near = d.table.nearest(TEXT + 0x2000n + 0x15n);
    assert.equal(near?.offset, 5n);
    assert.equal(near?.symbol.address, TEXT + 0x2010n);
    // Aliases: the first of several symbols at one address.
    assert.equal(d.table.nearest(TEXT + 3n)?.symbol.name, "_text");
    if (absolutePercpu) {
      assert.equal(d.table.address("cpu_tss_rw"), 0x6000n);
      assert.equal(d.table.nearest(0x6010n)?.symbol.name, "cpu_tss_rw");
      assert.equal(d.table.nearest(0x1_0000_0000n)?.symbol.name, "cpu_tss_rw", "between per-CPU values and the base");
    } else assert.equal(d.table.nearest(TEXT - 1n), undefined);
  });
}

test("property: nearest() agrees with a linear search", () => {
  const img = build(600);
  const { mem, layout } = place(img);
  const table = decodeKallsyms(mem, layout, "6.12").table;
  const sorted = [...img.symbols].sort((a, b) => (a.address < b.address ? -1 : a.address > b.address ? 1 : 0));
  fc.assert(
    fc.property(fc.oneof(fc.bigInt({ min: 0n, max: 0x10000n }), fc.bigInt({ min: TEXT - 16n, max: TEXT + 0x2000n + 700n * 0x10n })), (addr) => {
      let best: SymbolSpec | undefined;
      for (const s of sorted) if (s.address <= addr && (best === undefined || s.address > best.address)) best = s;
      const got = table.nearest(addr);
      if (!best) assert.equal(got, undefined);
      else {
        assert.equal(got?.symbol.address, best.address);
        assert.equal(got?.offset, addr - best.address);
      }
    }),
    { numRuns: 500 },
  );
});

test("refuses kallsyms formats older than 6.2 with a clear typed error", () => {
  for (const release of ["6.1.0", "5.15.0-91-generic", "4.19.0", "3.10.0"]) {
    assert.throws(
      () => checkKallsymsVersion(release),
      (e: unknown) => e instanceof IntrospectionError && e.reason === "unsupported" && /only 6\.2 and later/.test(e.message) && e.message.includes(release),
    );
  }
  assert.throws(() => checkKallsymsVersion("banana"), (e: unknown) => e instanceof IntrospectionError && e.reason === "unsupported");
  assert.deepEqual(checkKallsymsVersion("6.2.0"), [6, 2, 0]);
  assert.deepEqual(checkKallsymsVersion("7.0.1"), [7, 0, 1]);
  const img = build(10);
  const { mem, layout } = place(img);
  assert.throws(() => decodeKallsyms(mem, layout, "5.10.0"), (e: unknown) => e instanceof IntrospectionError && e.reason === "unsupported");
});

test("layout from VMCOREINFO: all six addresses, or a typed error", () => {
  const v = parseVmcoreinfo(
    "OSRELEASE=6.12\nSYMBOL(kallsyms_names)=10\nSYMBOL(kallsyms_num_syms)=8\nSYMBOL(kallsyms_token_table)=20\nSYMBOL(kallsyms_token_index)=30\nSYMBOL(kallsyms_offsets)=40\nSYMBOL(kallsyms_relative_base)=50\n",
  );
  assert.deepEqual(kallsymsLayoutFromVmcoreinfo(v), { numSyms: 8n, names: 0x10n, tokenTable: 0x20n, tokenIndex: 0x30n, offsets: 0x40n, relativeBase: 0x50n });
  assert.throws(() => kallsymsLayoutFromVmcoreinfo(parseVmcoreinfo("OSRELEASE=6.12\n")), (e: unknown) => e instanceof IntrospectionError && e.reason === "not-found");
  const abs = parseVmcoreinfo(
    "OSRELEASE=6.12\nSYMBOL(kallsyms_names)=10\nSYMBOL(kallsyms_num_syms)=8\nSYMBOL(kallsyms_token_table)=20\nSYMBOL(kallsyms_token_index)=30\nSYMBOL(kallsyms_offsets)=40\nSYMBOL(kallsyms_addresses)=50\n",
  );
  assert.throws(() => kallsymsLayoutFromVmcoreinfo(abs), (e: unknown) => e instanceof IntrospectionError && e.reason === "unsupported" && /kallsyms_addresses/.test(e.message));
});

test("tampering with the tables the decoder does not need shows in the checks, and lookups stay right", () => {
  const img = build(900);
  // Markers: one wrong entry.
  {
    const { ram, mem, layout } = place(img);
    ram.writeUInt32LE(ram.readUInt32LE(Number(img.layout.markers) + 4) + 1, Number(img.layout.markers) + 4);
    assert.equal(decodeKallsyms(mem, layout, "6.12").checks.markers, "mismatch");
  }
  // seqs_of_names: two entries swapped -> not sorted, and name lookups fall back to our own sort.
  {
    const { ram, mem, layout } = place(img);
    const s = Number(img.layout.seqsOfNames);
    const a = ram.subarray(s + 30, s + 33).toString("hex");
    ram.write(ram.subarray(s + 300, s + 303).toString("hex"), s + 30, "hex");
    ram.write(a, s + 300, "hex");
    const d = decodeKallsyms(mem, layout, "6.12");
    assert.equal(d.checks.seqsOfNames, "not-sorted");
    for (const sym of img.symbols) assert.ok(d.table.lookupAll(sym.name).some((x) => x.address === sym.address), sym.name);
  }
  // seqs_of_names: a duplicate entry -> not a permutation.
  {
    const { ram, mem, layout } = place(img);
    const s = Number(img.layout.seqsOfNames);
    ram.copy(ram, s + 3, s, s + 3);
    assert.equal(decodeKallsyms(mem, layout, "6.12").checks.seqsOfNames, "not-a-permutation");
  }
  // Offsets out of order -> flagged, and nearest() still answers by true address order.
  {
    const { ram, mem, layout } = place(img);
    const o = Number(img.layout.offsets);
    const i = 100;
    const j = 700;
    const x = ram.readInt32LE(o + 4 * i);
    ram.writeInt32LE(ram.readInt32LE(o + 4 * j), o + 4 * i);
    ram.writeInt32LE(x, o + 4 * j);
    const d = decodeKallsyms(mem, layout, "6.12");
    assert.equal(d.checks.addressesSorted, false);
    assert.equal(d.table.inAddressOrder, false);
    const moved = d.table.symbol(i);
    assert.ok(moved);
    assert.equal(d.table.nearest(moved.address)?.symbol.address, moved.address);
  }
});

test("malformed tables are refused with a typed error naming the problem", () => {
  const img = build(300);
  const cases: [string, (ram: Buffer) => void, RegExp][] = [
    ["num_syms zero", (r) => r.writeUInt32LE(0, Number(img.layout.numSyms)), /kallsyms_num_syms is 0/],
    ["num_syms huge", (r) => r.writeUInt32LE(0xffffffff, Number(img.layout.numSyms)), /kallsyms_num_syms/],
    ["token index past the table", (r) => r.writeUInt16LE(0xfff0, Number(img.layout.tokenIndex) + 2), /token 1 starts/],
    ["unprintable token", (r) => (r[Number(img.layout.tokenTable) + 1] = 0x01), /token/],
    ["zero length entry", (r) => (r[Number(img.layout.names)] = 0), /length 0/],
  ];
  for (const [what, mutate, pattern] of cases) {
    const { ram, mem, layout } = place(img);
    mutate(ram);
    assert.throws(() => decodeKallsyms(mem, layout, "6.12"), (e: unknown) => e instanceof IntrospectionError && pattern.test(e.message), what);
  }
  const { mem, layout } = place(img);
  assert.throws(() => decodeKallsyms(mem, { ...layout, tokenIndex: layout.tokenTable }, "6.12"), (e: unknown) => e instanceof IntrospectionError && /does not follow/.test(e.message));
  assert.throws(() => decodeKallsyms(mem, { ...layout, names: 0x7fff_0000n }, "6.12"), (e: unknown) => e instanceof IntrospectionError);
});

test("carve finds the tables in physical memory without VMCOREINFO, past a decoy digit run", () => {
  const img = build(900);
  const { ram, mem } = place(img);
  // A decoy: the digit run without a token table around it.
  ram.write("0\x001\x002\x003\x004\x005\x006\x007\x008\x009\x00", 0x1000, "latin1");
  const carved = carveKallsyms(mem);
  assert.deepEqual(carved.layout, img.layout);
  assert.equal(carved.candidatesExamined, 2);
  const d = decodeKallsyms(mem, carved.layout, "6.12");
  assert.equal(d.table.address("_stext"), TEXT);
  assert.throws(() => carveKallsyms(new BufferPhysicalMemory(Buffer.alloc(64 * 1024))), (e: unknown) => e instanceof IntrospectionError && e.reason === "not-found");
});

test("rebase moves every relative symbol by the KASLR difference and keeps per-CPU values", () => {
  const img = build(300);
  const { mem, layout } = place(img);
  const t = decodeKallsyms(mem, layout, "6.12").table;
  const moved = t.rebase(TEXT + 0x20_0000n);
  assert.equal(moved.address("_stext"), TEXT + 0x20_0000n);
  assert.equal(moved.address("cpu_tss_rw"), 0x6000n);
  assert.equal(moved.nearest(TEXT + 0x20_0000n + 0x2001n)?.symbol.address, TEXT + 0x20_2000n);
});

test("fuzz: decoding mutated tables throws nothing but IntrospectionError and never hangs", () => {
  const img = build(400);
  const base = place(img);
  fc.assert(
    fc.property(
      fc.array(fc.record({ at: fc.nat({ max: img.bytes.length - 1 }), value: fc.integer({ min: 0, max: 255 }) }), { minLength: 1, maxLength: 24 }),
      fc.boolean(),
      (edits, carve) => {
        const ram = Buffer.from(base.ram);
        for (const e of edits) ram[Number(PLACE) + e.at] = e.value;
        const mem = new BufferPhysicalMemory(ram);
        try {
          const layout = carve ? carveKallsyms(mem).layout : base.layout;
          const d = decodeKallsyms(mem, layout, "6.12");
          // Whatever decoded must be internally consistent.
          for (let i = 0; i < d.table.count; i += 37) {
            const s = d.table.symbol(i);
            assert.ok(s && s.name.length > 0 && /^[A-Za-z]$/.test(s.type));
            assert.ok(d.table.lookupAll(s.name).some((x) => x.index === i));
          }
        } catch (err) {
          assert.ok(err instanceof IntrospectionError, String(err));
        }
      },
    ),
    { numRuns: 300 },
  );
});

test("thousands of symbols with one name are looked up without blowing the stack", () => {
  const syms: SymbolSpec[] = [{ name: "_text", type: "T", address: TEXT }];
  for (let i = 0; i < 5000; i++) syms.push({ name: "same", type: "t", address: TEXT + 0x10n + BigInt(i) });
  const img = buildKallsyms(syms, { virtBase: PLACE, relativeBase: TEXT, absolutePercpu: true, tableSymbols: false });
  const { mem, layout } = place(img);
  const t = decodeKallsyms(mem, layout, "6.12").table;
  assert.equal(t.address("same"), TEXT + 0x10n);
  assert.equal(t.lookupAll("same").length, 5000);
});
