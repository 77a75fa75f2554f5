import { test } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { IntrospectionError } from "./errors.ts";
import { BufferPhysicalMemory } from "./physical-memory.ts";
import { MAX_VMCOREINFO_BYTES, candidateAt, kernelVersion, parseVmcoreinfo, scanVmcoreinfo } from "./vmcoreinfo.ts";

/** The head and tail of the VMCOREINFO of Debian's 6.12.117 cloud kernel, as read from a running guest. */
const REAL = `OSRELEASE=6.12.117+deb12-cloud-amd64
BUILD-ID=7f76f39faf07f34cfa9fadd801e131bfa8cb6dc3
PAGESIZE=4096
SYMBOL(init_uts_ns)=ffffffffaf021bc0
OFFSET(uts_namespace.name)=0
SYMBOL(node_online_map)=ffffffffaf06a5e0
SYMBOL(swapper_pg_dir)=ffffffffaee22000
SYMBOL(_stext)=ffffffffad200000
NUMBER(VMALLOC_START)=0xff51e4f640000000
SYMBOL(vmemmap)=ffcdd7c600000000
SYMBOL(mem_section)=ff1bfae94fd8c680
LENGTH(mem_section)=131072
SIZE(mem_section)=16
OFFSET(mem_section.section_mem_map)=0
SIZE(list_head)=16
OFFSET(list_head.next)=0
OFFSET(list_head.prev)=8
NUMBER(PAGE_BUDDY_MAPCOUNT_VALUE)=-268435456
SYMBOL(kallsyms_names)=ffffffffae352ad8
SYMBOL(kallsyms_num_syms)=ffffffffae352ad0
SYMBOL(kallsyms_token_table)=ffffffffae55c330
SYMBOL(kallsyms_token_index)=ffffffffae55c730
SYMBOL(kallsyms_offsets)=ffffffffae55c930
SYMBOL(kallsyms_relative_base)=ffffffffae5f3a28
NUMBER(phys_base)=-637534208
SYMBOL(init_top_pgt)=ffffffffaee22000
NUMBER(pgtable_l5_enabled)=1
SYMBOL(node_data)=ffffffffaf9d61c0
LENGTH(node_data)=1024
KERNELOFFSET=2c200000
NUMBER(KERNEL_IMAGE_SIZE)=1073741824
NUMBER(sme_mask)=0
`;

test("parses the real 6.12 VMCOREINFO into typed fields", () => {
  const v = parseVmcoreinfo(REAL);
  assert.equal(v.osRelease, "6.12.117+deb12-cloud-amd64");
  assert.equal(v.buildId, "7f76f39faf07f34cfa9fadd801e131bfa8cb6dc3");
  assert.equal(v.pageSize, 4096);
  assert.equal(v.kernelOffset, 0x2c200000n);
  // phys_base is printed signed; __pa_symbol arithmetic wants it modulo 2^64.
  assert.equal(v.physBase, 0xffff_ffff_da00_0000n);
  assert.equal(v.pgtableL5Enabled, true);
  assert.equal(v.symbols.get("swapper_pg_dir"), 0xffffffffaee22000n);
  assert.equal(v.symbols.get("kallsyms_relative_base"), 0xffffffffae5f3a28n);
  assert.equal(v.numbers.get("VMALLOC_START"), 0xff51e4f640000000n);
  assert.equal(v.numbers.get("PAGE_BUDDY_MAPCOUNT_VALUE"), -268435456n);
  assert.equal(v.offsets.get("list_head.prev"), 8n);
  assert.equal(v.sizes.get("list_head"), 16n);
  assert.equal(v.lengths.get("node_data"), 1024n);
  assert.equal(v.raw.get("KERNELOFFSET"), "2c200000");
});

test("rejects malformed VMCOREINFO with the byte offset of the bad line", () => {
  const bad = (text: string, pattern: RegExp): void => {
    assert.throws(
      () => parseVmcoreinfo(text),
      (e: unknown) => e instanceof IntrospectionError && e.reason === "malformed" && pattern.test(e.message),
      text.slice(0, 60),
    );
  };
  bad("PAGESIZE=4096\nOSRELEASE=6.1\n", /starts with "PAGESIZE"/);
  bad("OSRELEASE=%s\n", /not a kernel release/);
  bad("OSRELEASE=6.12\nnot a line\n", /line 2 at byte offset 15: no KEY=VALUE/);
  bad("OSRELEASE=6.12\nsymbol(x)=1\n", /byte offset 15: key/);
  bad("OSRELEASE=6.12\nSYMBOL(x)=12\x01\n", /printable/);
  bad("OSRELEASE=6.12\nSYMBOL(x)=1\nSYMBOL(x)=2\n", /twice with different values/);
  bad("OSRELEASE=6.12\nSYMBOL(x)=zz\n", /not a 64-bit hex number/);
  bad("OSRELEASE=6.12\nSYMBOL(x)=11112222333344445\n", /not a 64-bit hex number/);
  bad("OSRELEASE=6.12\nNUMBER(x)=99999999999999999999\n", /does not fit 64 bits/);
  bad("OSRELEASE=6.12\nBUILD-ID=XYZ\n", /BUILD-ID/);
  bad("OSRELEASE=6.12\n" + "A=1\n".repeat(1100), /(more than 1024 lines|bytes \(at most)/);
  bad("OSRELEASE=6.12\n" + "X".repeat(MAX_VMCOREINFO_BYTES), /at most/);
  // The same key twice with the same value is tolerated.
  assert.equal(parseVmcoreinfo("OSRELEASE=6.12\nPAGESIZE=4096\nPAGESIZE=4096\n").pageSize, 4096);
});

test("kernelVersion reads major.minor.patch", () => {
  assert.deepEqual(kernelVersion("6.12.117+deb12-cloud-amd64"), [6, 12, 117]);
  assert.deepEqual(kernelVersion("6.2"), [6, 2, 0]);
  assert.equal(kernelVersion("linux"), undefined);
});

/** 1 MiB of RAM with the data page, the ELF note, a decoy and an unaligned copy. */
function ramWithVmcoreinfo(): Buffer {
  const ram = Buffer.alloc(1024 * 1024);
  ram.write(REAL, 0x1000, "latin1");
  const note = 0x3000;
  ram.writeUInt32LE(11, note);
  ram.writeUInt32LE(REAL.length, note + 4);
  ram.write("VMCOREINFO\0", note + 12, "latin1");
  ram.write(REAL, note + 24, "latin1");
  ram.write("SHTIME=%lld\n\0VMCOREINFO\0OSRELEASE=%s\n\0", 0x8000 + 100, "latin1");
  ram.write("\0" + REAL.replace("6.12.117", "6.12.999"), 0x9123, "latin1");
  ram.write("XOSRELEASE=6.1\n", 0xa000 + 7, "latin1");
  return ram;
}

test("scan finds the data page and the note (page-aligned mode), skipping the format-string decoy", () => {
  const mem = new BufferPhysicalMemory(ramWithVmcoreinfo());
  const scan = scanVmcoreinfo(mem);
  assert.deepEqual(
    scan.candidates.map((c) => [c.paddr, c.site, c.result.ok]),
    [
      [0x1000n, "page", true],
      [0x3018n, "note", true],
    ],
  );
  assert.equal(scan.valid.length, 2);
  assert.equal(scan.bytesScanned, 1024n * 1024n);
  const first = scan.valid[0];
  assert.ok(first?.result.ok);
  if (first?.result.ok) assert.equal(first.result.info.kernelOffset, 0x2c200000n);
});

test("scan in anywhere mode also finds unaligned copies and rejects the decoy strictly", () => {
  const mem = new BufferPhysicalMemory(ramWithVmcoreinfo());
  const scan = scanVmcoreinfo(mem, { mode: "anywhere", chunkBytes: 4096 });
  const sites = scan.candidates.map((c) => [c.paddr, c.result.ok]);
  assert.deepEqual(sites, [
    [0x1000n, true],
    [0x3018n, true],
    [0x8000n + 100n + 24n, false],
    [0x9124n, true],
  ]);
  const decoy = scan.candidates[2];
  assert.ok(decoy && !decoy.result.ok && /not a kernel release/.test(decoy.result.error.message));
  // Marker straddling a chunk boundary (chunks are 4 KiB here) is still found.
  const ram = Buffer.alloc(64 * 1024);
  ram.write(REAL, 0x2000 - 4, "latin1");
  assert.deepEqual(
    scanVmcoreinfo(new BufferPhysicalMemory(ram), { mode: "anywhere", chunkBytes: 4096 }).candidates.map((c) => c.paddr),
    [0x2000n - 4n],
  );
});

test("scan stops at maxCandidates and says so", () => {
  const ram = Buffer.alloc(256 * 4096);
  for (let p = 0; p < 256; p++) ram.write("OSRELEASE=6.12\n", p * 4096, "latin1");
  const scan = scanVmcoreinfo(new BufferPhysicalMemory(ram), { maxCandidates: 10 });
  assert.equal(scan.candidates.length, 10);
  assert.equal(scan.truncated, true);
});

test("candidateAt re-reads a known location without a scan", () => {
  const mem = new BufferPhysicalMemory(ramWithVmcoreinfo());
  assert.equal(candidateAt(mem, 0x3018n).site, "note");
  assert.equal(candidateAt(mem, 0x3018n).result.ok, true);
  assert.equal(candidateAt(mem, 0x10_0000_0000n).result.ok, false);
  assert.equal(candidateAt(mem, 0x5000n).result.ok, false);
});

test("fuzz: mutated VMCOREINFO text either parses strictly or throws IntrospectionError", () => {
  fc.assert(
    fc.property(fc.array(fc.record({ at: fc.nat(), text: fc.string({ maxLength: 6, unit: "binary-ascii" }) }), { minLength: 1, maxLength: 6 }), (edits) => {
      let text = REAL;
      for (const e of edits) {
        const at = e.at % (text.length + 1);
        text = text.slice(0, at) + e.text + text.slice(at + e.text.length);
      }
      try {
        const v = parseVmcoreinfo(text);
        assert.match(v.osRelease, /^[A-Za-z0-9._+~-]{1,64}$/);
        for (const a of v.symbols.values()) assert.ok(a >= 0n && a < 1n << 64n);
      } catch (err) {
        assert.ok(err instanceof IntrospectionError, String(err));
      }
    }),
    { numRuns: 1000 },
  );
});

test("fuzz: scanning random memory with planted markers never throws and stays inside RAM", () => {
  fc.assert(
    fc.property(fc.uint8Array({ minLength: 0, maxLength: 3 * 4096 }), fc.array(fc.nat(), { maxLength: 8 }), fc.constantFrom<"page-aligned" | "anywhere">("page-aligned", "anywhere"), (bytes, spots, mode) => {
      const ram = Buffer.from(bytes);
      for (const s of spots) if (ram.length > 0) ram.write("OSRELEASE=", s % ram.length, "latin1");
      const mem = new BufferPhysicalMemory(ram, ram.length === 0 ? [] : undefined);
      const scan = scanVmcoreinfo(mem, { mode, chunkBytes: 4096 });
      for (const c of scan.candidates) assert.ok(c.paddr < BigInt(ram.length));
    }),
    { numRuns: 300 },
  );
});
