import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import fc from "fast-check";
import { ImageCatalog } from "../image/catalog.ts";
import { vigilCache } from "../paths.ts";
import { Btf, BtfKind } from "./btf.ts";
import { readElfSectionFromFile } from "./elf.ts";
import { IntrospectionError } from "./errors.ts";
import { BTF_FACTS, BtfBuilder, kernelLikeBtf } from "./testing/synthetic-guest.ts";

test("struct sizes and member offsets, through anonymous structs and unions, with kind_flag bitfields", () => {
  const btf = Btf.parse(kernelLikeBtf());
  for (const [key, want] of Object.entries(BTF_FACTS)) {
    if (key.startsWith("sizeof_")) assert.equal(btf.structSize(key.slice(7)), want, key);
    else {
      const dot = key.indexOf(".");
      assert.equal(btf.structMemberOffset(key.slice(0, dot), key.slice(dot + 1)), want, key);
    }
  }
  const pgd = btf.member("mm_struct", "pgd");
  assert.equal(pgd.via.length, 1, "reached through mm_struct's anonymous struct");
  const parent = btf.member("task_struct", "real_parent");
  assert.equal(parent.byteOffset, 2448);
  assert.equal(btf.type(parent.via[0] as number)?.kind, BtfKind.UNION);
  const bits = btf.member("task_struct", "other_bits");
  assert.deepEqual([bits.bitOffset, bits.bitfieldSize, bits.byteOffset], [2440 * 8 + 3, 5, 2440]);
  assert.equal(btf.structMemberOffset("task_struct", "tasks.prev"), 2232, "dotted path into a named member");
  assert.equal(btf.structMemberOffset("atomic_long_t", "counter"), 0, "a typedef of a struct");
});

test("arrayLength gives the element count of array members, through typedefs, and undefined otherwise", () => {
  const btf = Btf.parse(kernelLikeBtf());
  assert.equal(btf.arrayLength(btf.member("task_struct", "comm").type), 16);
  assert.equal(btf.arrayLength(btf.member("module", "name").type), 56);
  assert.equal(btf.arrayLength(btf.member("task_struct", "pid").type), undefined);
  assert.equal(btf.arrayLength(0), undefined);
  assert.equal(btf.arrayLength(1_000_000), undefined);
  const b = new BtfBuilder();
  const int = b.int("int", 4, true);
  const arr = b.array(int, int, 7);
  const td = b.typedef("seven_t", arr);
  assert.equal(Btf.parse(b.build()).arrayLength(td), 7);
});

test("lookups of what is not there are typed not-found errors", () => {
  const btf = Btf.parse(kernelLikeBtf());
  const notFound = (f: () => unknown): void => assert.throws(f, (e: unknown) => e instanceof IntrospectionError && e.reason === "not-found");
  notFound(() => btf.structSize("no_such_struct"));
  notFound(() => btf.structMemberOffset("task_struct", "no_such_member"));
  notFound(() => btf.structMemberOffset("task_struct", "pid.x"));
  assert.throws(() => btf.structMemberOffset("task_struct", "a..b"), IntrospectionError);
  assert.equal(btf.type(0), undefined);
  assert.equal(btf.type(btf.typeCount + 1), undefined);
  assert.deepEqual(btf.findByName(""), []);
});

test("malformed BTF is refused with the byte offset or type at fault", () => {
  const good = kernelLikeBtf();
  const mutate = (f: (b: Buffer) => void): Buffer => {
    const b = Buffer.from(good);
    f(b);
    return b;
  };
  const bad = (buf: Buffer, pattern: RegExp): void => {
    assert.throws(() => Btf.parse(buf), (e: unknown) => e instanceof IntrospectionError && e.reason === "malformed" && pattern.test(e.message));
  };
  bad(mutate((b) => b.writeUInt16LE(0x9feb, 0)), /magic 0x9feb/);
  bad(mutate((b) => (b[2] = 2)), /version 2/);
  bad(mutate((b) => b.writeUInt32LE(0xffffff, 12)), /type section/);
  bad(mutate((b) => b.writeUInt32LE(0xffffff, 20)), /string section/);
  bad(mutate((b) => (b[24 + 7] = 31 & 0x1f)), /unknown kind 31/);
  bad(mutate((b) => b.writeUInt32LE(0xfffffff, 24)), /name offset/);
  bad(good.subarray(0, 20), /shorter than the header/);
  bad(good.subarray(0, good.length - 1), /string section/);
});

test("loops in the type graph end in a typed error instead of hanging", () => {
  // typedef A -> typedef B -> typedef A
  const b = new BtfBuilder();
  b.typedef("A", 2);
  b.typedef("B", 1);
  const loop = Btf.parse(b.build());
  assert.throws(() => loop.resolve(1), (e: unknown) => e instanceof IntrospectionError && /loop/.test(e.message));
  // A struct whose anonymous member is itself.
  const c = new BtfBuilder();
  c.struct("self", 8, [{ name: "", type: 1, bitOffset: 0 }]);
  assert.throws(() => Btf.parse(c.build()).structMemberOffset("self", "x"), (e: unknown) => e instanceof IntrospectionError && /deeper|visits/.test(e.message));
  // A diamond of anonymous members doubling at every level: bounded by the visit budget.
  const d = new BtfBuilder();
  const leaf = d.struct("", 8, [{ name: "y", type: 0, bitOffset: 0 }]);
  let prev = leaf;
  for (let i = 0; i < 30; i++) prev = d.struct(i === 29 ? "top" : "", 8, [{ name: "", type: prev, bitOffset: 0 }, { name: "", type: prev, bitOffset: 0 }]);
  const t0 = performance.now();
  assert.throws(() => Btf.parse(d.build()).structMemberOffset("top", "nothere"), IntrospectionError);
  assert.ok(performance.now() - t0 < 2000);
});

/** Parses `bpftool btf dump ... format raw` into types by id (an independent reader to compare against). */
interface RefType {
  kind: string;
  name: string;
  size?: number;
  /** type_id= of the header line (typedefs, qualifiers, pointers). */
  ref?: number;
  members: { name: string; type: number; bits: number; bitfield: number }[];
}

function parseBpftoolRaw(text: string): Map<number, RefType> {
  const out = new Map<number, RefType>();
  let cur: RefType | undefined;
  for (const line of text.split("\n")) {
    const t = /^\[(\d+)\] (\w+) '([^']*)'(.*)$/.exec(line);
    if (t) {
      const size = /\bsize=(\d+)/.exec(t[4] ?? "");
      const ref = /\btype_id=(\d+)/.exec(t[4] ?? "");
      cur = { kind: t[2] as string, name: t[3] === "(anon)" ? "" : (t[3] as string), members: [] };
      if (size) cur.size = Number(size[1]);
      if (ref) cur.ref = Number(ref[1]);
      out.set(Number(t[1]), cur);
      continue;
    }
    const m = /^\t'([^']*)' type_id=(\d+) bits_offset=(\d+)(?: bitfield_size=(\d+))?/.exec(line);
    if (m && cur && (cur.kind === "STRUCT" || cur.kind === "UNION")) {
      cur.members.push({ name: m[1] === "(anon)" ? "" : (m[1] as string), type: Number(m[2]), bits: Number(m[3]), bitfield: Number(m[4] ?? 0) });
    }
  }
  return out;
}

const KIND_NAMES = ["UNKN", "INT", "PTR", "ARRAY", "STRUCT", "UNION", "ENUM", "FWD", "TYPEDEF", "VOLATILE", "CONST", "RESTRICT", "FUNC", "FUNC_PROTO", "VAR", "DATASEC", "FLOAT", "DECL_TAG", "TYPE_TAG", "ENUM64"];

/** Every struct/union: same kind, name, size and members as bpftool says. Returns how many were compared. */
function compareWithBpftool(btf: Btf, raw: string): number {
  const ref = parseBpftoolRaw(raw);
  assert.equal(btf.typeCount, ref.size, "type count");
  let compared = 0;
  for (const [id, r] of ref) {
    const t = btf.type(id);
    assert.ok(t, `type ${id}`);
    assert.equal(KIND_NAMES[t.kind], r.kind, `kind of type ${id}`);
    assert.equal(t.name, r.name, `name of type ${id}`);
    if (r.kind === "STRUCT" || r.kind === "UNION") {
      assert.equal(t.sizeOrType, r.size, `size of ${r.name || id}`);
      assert.deepEqual(
        btf.members(id).map((m) => ({ name: m.name, type: m.type, bits: m.bitOffset, bitfield: m.bitfieldSize })),
        r.members,
        `members of ${r.name || id}`,
      );
      compared++;
    }
  }
  return compared;
}

// bpftool is installed by set-up: these cross-checks fail, rather than skip, when it is missing.
test("cross-check: bpftool reads the synthetic BTF the same way", (t) => {
  const dir = mkdtempSync(join(tmpdir(), "vigil-btf-"));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const path = join(dir, "btf.raw");
  writeFileSync(path, kernelLikeBtf());
  const raw = execFileSync("bpftool", ["btf", "dump", "file", path, "format", "raw"], { encoding: "utf8" });
  assert.ok(compareWithBpftool(Btf.parse(kernelLikeBtf()), raw) >= 5);
});

// A real kernel: the vmlinux that set-up extracted into the tiny image (VIGIL_TEST_VMLINUX overrides).
test(
  "cross-check: vmlinux .BTF — every struct and union agrees with bpftool, and the engine's offsets follow",
  () => {
    const tiny = new ImageCatalog(vigilCache()).tinyDir();
    const path = process.env.VIGIL_TEST_VMLINUX ?? (tiny ? join(tiny, "vmlinux") : "");
    assert.ok(existsSync(path), "set-up must build the tiny image (with its vmlinux): run npm test / guest/build-tiny.sh");
    const section = readElfSectionFromFile(path, ".BTF");
    assert.ok(section);
    const btf = Btf.parse(section);
    const raw = execFileSync("bpftool", ["btf", "dump", "file", path, "format", "raw"], { encoding: "utf8", maxBuffer: 512 * 1024 * 1024 });
    const compared = compareWithBpftool(btf, raw);
    assert.ok(compared > 1000, `${compared} structs and unions compared`);
    // The offsets the checks use, resolved independently over bpftool's dump (anonymous members included).
    const ref = parseBpftoolRaw(raw);
    const find = (id: number, name: string, depth = 0): number | undefined => {
      const t = ref.get(id);
      if (!t || depth > 8) return undefined;
      for (const m of t.members) if (m.name === name) return m.bits;
      for (const m of t.members) {
        if (m.name !== "") continue;
        let inner = m.type;
        for (let hops = 0; hops < 8 && ["TYPEDEF", "CONST", "VOLATILE"].includes(ref.get(inner)?.kind ?? ""); hops++) inner = ref.get(inner)?.ref ?? 0;
        const hit = find(inner, name, depth + 1);
        if (hit !== undefined) return m.bits + hit;
      }
      return undefined;
    };
    const structId = (name: string): number => [...ref].find(([, t]) => t.kind === "STRUCT" && t.name === name && t.members.length > 0)?.[0] as number;
    for (const key of ["task_struct.tasks", "task_struct.pid", "task_struct.tgid", "task_struct.comm", "task_struct.mm", "task_struct.real_parent", "task_struct.cred", "mm_struct.pgd", "module.list", "module.name"]) {
      const [s, m] = key.split(".") as [string, string];
      const bits = find(structId(s), m);
      assert.ok(bits !== undefined, key);
      assert.equal(btf.structMemberOffset(s, m), bits / 8, key);
    }
  },
);

test("fuzz: mutated BTF either parses and answers, or throws IntrospectionError; never hangs", () => {
  const good = kernelLikeBtf();
  fc.assert(
    fc.property(fc.array(fc.record({ at: fc.nat({ max: good.length - 1 }), value: fc.integer({ min: 0, max: 255 }) }), { minLength: 1, maxLength: 16 }), (edits) => {
      const buf = Buffer.from(good);
      for (const e of edits) buf[e.at] = e.value;
      try {
        const btf = Btf.parse(buf);
        for (const [s, m] of [
          ["task_struct", "tasks"],
          ["mm_struct", "pgd"],
          ["task_struct", "real_parent"],
          ["module", "name"],
        ] as const) {
          try {
            btf.structMemberOffset(s, m);
            btf.structSize(s);
          } catch (err) {
            assert.ok(err instanceof IntrospectionError, String(err));
          }
        }
        for (let id = 0; id <= btf.typeCount + 1; id++) {
          btf.type(id);
          btf.members(id);
          try {
            btf.resolve(id);
          } catch (err) {
            assert.ok(err instanceof IntrospectionError, String(err));
          }
        }
      } catch (err) {
        assert.ok(err instanceof IntrospectionError, String(err));
      }
    }),
    { numRuns: 1000 },
  );
});
