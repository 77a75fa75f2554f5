import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import fc from "fast-check";
import { SHT_NOBITS, elfSectionFromBuffer, readElfSectionFromFile, readElfSections } from "./elf.ts";
import { IntrospectionError } from "./errors.ts";
import { buildElf } from "./testing/synthetic-guest.ts";

const sections = [
  { name: ".text", data: Buffer.from("code"), addr: 0xffffffff81000000n },
  { name: ".BTF", data: Buffer.from([0x9f, 0xeb, 1, 0, 1, 2, 3]) },
  { name: ".bss", data: Buffer.alloc(0), type: SHT_NOBITS },
];

test("reads named sections of an ELF64 image from memory and from a file", (t) => {
  const elf = buildElf(sections);
  assert.deepEqual(elfSectionFromBuffer(elf, ".BTF"), Buffer.from([0x9f, 0xeb, 1, 0, 1, 2, 3]));
  assert.equal(elfSectionFromBuffer(elf, ".nope"), undefined);
  assert.equal(elfSectionFromBuffer(elf, ".bss"), undefined, "NOBITS has no file contents");
  const dir = mkdtempSync(join(tmpdir(), "vigil-elf-"));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const path = join(dir, "vmlinux");
  writeFileSync(path, elf);
  assert.deepEqual(readElfSectionFromFile(path, ".text"), Buffer.from("code"));
  assert.throws(() => readElfSectionFromFile(join(dir, "missing"), ".BTF"), (e: unknown) => e instanceof IntrospectionError && e.reason === "host-input");
});

// readelf (binutils) is installed by set-up: the cross-check fails rather than skips without it.
test("cross-check: the section table of a system binary matches readelf", () => {
  const bin = "/bin/ls";
  const out = execFileSync("readelf", ["-S", "-W", bin], { encoding: "utf8" });
  const image = readFileSync(bin);
  const ours = readElfSections((o, l) => (o + BigInt(l) <= BigInt(image.length) ? image.subarray(Number(o), Number(o) + l) : undefined), BigInt(statSync(bin).size));
  const theirs = [...out.matchAll(/^\s*\[\s*(\d+)\]\s+(\S*)\s+\S+\s+([0-9a-f]+)\s+([0-9a-f]+)\s+([0-9a-f]+)/gm)].map((m) => ({
    name: m[2] === "NULL" ? "" : (m[2] as string),
    addr: BigInt("0x" + m[3]),
    offset: BigInt("0x" + m[4]),
    size: BigInt("0x" + m[5]),
  }));
  assert.ok(theirs.length > 10);
  assert.deepEqual(
    ours.map((s) => ({ name: s.name, addr: s.addr, offset: s.offset, size: s.size })),
    theirs,
  );
});

test("malformed ELF headers are refused with a typed error", () => {
  const good = buildElf(sections);
  const bad = (f: (b: Buffer) => void, pattern: RegExp): void => {
    const b = Buffer.from(good);
    f(b);
    assert.throws(() => elfSectionFromBuffer(b, ".BTF"), (e: unknown) => e instanceof IntrospectionError && e.reason === "malformed" && pattern.test(e.message));
  };
  bad((b) => b.write("XELF", 0), /no ELF magic/);
  bad((b) => (b[4] = 1), /ELFCLASS64/);
  bad((b) => (b[5] = 2), /little-endian/);
  bad((b) => b.writeBigUInt64LE(BigInt(good.length), 0x28), /past the end/);
  bad((b) => b.writeUInt16LE(60, 0x3a), /section header size/);
  bad((b) => b.writeUInt16LE(99, 0x3e), /out of range/);
  const shoff = Number(good.readBigUInt64LE(0x28));
  bad((b) => b.writeBigUInt64LE(0xffff_ffffn, shoff + 64 * 2 + 32), /past the end/);
  bad((b) => b.writeUInt32LE(0xffff, shoff + 64 * 2), /name offset/);
  assert.throws(() => elfSectionFromBuffer(good.subarray(0, 10), ".BTF"), IntrospectionError);
});

test("fuzz: mutated ELF images throw nothing but IntrospectionError", () => {
  const good = buildElf(sections);
  fc.assert(
    fc.property(fc.array(fc.record({ at: fc.nat({ max: good.length - 1 }), value: fc.integer({ min: 0, max: 255 }) }), { minLength: 1, maxLength: 12 }), (edits) => {
      const b = Buffer.from(good);
      for (const e of edits) b[e.at] = e.value;
      try {
        const s = elfSectionFromBuffer(b, ".BTF");
        if (s) assert.ok(s.length <= b.length);
      } catch (err) {
        assert.ok(err instanceof IntrospectionError, String(err));
      }
    }),
    { numRuns: 2000 },
  );
});
