// The deb822 parser: structure (stanzas, continuation lines, case-insensitive names), refusals naming the line
// (CR, blank-only lines, duplicates, orphan continuations, limits), and fuzzing: random stanza sets round-trip, any
// mutation of a real file parses or is refused with a VigilError, and hostile shapes stay linear.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import fc from "fast-check";
import { VigilError } from "../errors.ts";
import { DEB822_LIMITS, fieldValue, parseDeb822 } from "./deb822.ts";

const SEED = Number(process.env.VIGIL_FUZZ_SEED ?? 13);

test("stanzas, continuation lines, case-insensitive names, a last line without LF", () => {
  const s = parseDeb822("Package: a\nDescription: short\n long one\n .\n end\nversion:  1.0 \n\n\nPackage: b\nX-Y: z", "t");
  assert.equal(s.length, 2);
  assert.equal(s[0]!.line, 1);
  assert.equal(s[1]!.line, 9);
  assert.equal(fieldValue(s[0]!, "description"), "short\nlong one\n.\nend");
  assert.equal(fieldValue(s[0]!, "Version"), "1.0");
  assert.equal(s[0]!.fields.get("version")!.name, "version");
  assert.equal(fieldValue(s[1]!, "x-y"), "z");
  assert.deepEqual(parseDeb822("", "t"), []);
  assert.deepEqual(parseDeb822(Buffer.from("A: \xe9", "latin1"), "t")[0]!.fields.get("a")!.value, "\xe9");
});

const refusals: Array<[string, RegExp]> = [
  ["A: 1\r\nB: 2\n", /t, line 1: a carriage return/],
  ["A: 1\n \nB: 2\n", /t, line 2: a line of only spaces/],
  [" x\nA: 1\n", /t, line 1: a continuation line .* before any field/],
  ["A: 1\n\n continued\n", /t, line 3: a continuation line/],
  ["A: 1\nnocolon\n", /t, line 2: expected "Field: value"/],
  ["A: 1\n: v\n", /t, line 2: expected/],
  ["A: 1\n# comment: x\n", /t, line 2: invalid field name/],
  ["A: 1\nB: 2\na: 3\n", /t, line 3: field "a" appears twice in the stanza starting at line 1/],
  ["Bad Name: 1\n", /t, line 1: invalid field name "Bad Name"/],
];

test("malformed input is refused with the source and line", () => {
  for (const [input, re] of refusals) {
    assert.throws(() => parseDeb822(input, "t"), (e: unknown) => e instanceof VigilError && re.test(e.message) && e.field !== undefined, JSON.stringify(input));
  }
});

test("every limit is enforced and named", () => {
  const lim = { maxBytes: 100, maxStanzas: 2, maxFieldsPerStanza: 2, maxValueBytes: 10 };
  assert.throws(() => parseDeb822("A: 1\n".repeat(30), "t", lim), /150 bytes is more than the limit of 100/);
  assert.throws(() => parseDeb822("A: 1\n\nA: 2\n\nA: 3\n", "t", lim), /line 5: more than 2 stanzas/);
  assert.throws(() => parseDeb822("A: 1\nB: 2\nC: 3\n", "t", lim), /line 3: more than 2 fields/);
  assert.throws(() => parseDeb822("A: 12345678901\n", "t", lim), /line 1: field "A" is longer than 10 bytes/);
  assert.throws(() => parseDeb822("A: 12345\n 678901\n", "t", lim), /line 1: field "A" is longer than 10 bytes/);
  assert.throws(() => parseDeb822(Buffer.alloc(DEB822_LIMITS.maxBytes + 1), "t"), /more than the limit/);
});

const name = fc.stringMatching(/^[A-Za-z][A-Za-z0-9-]{0,12}$/);
const word = fc.stringMatching(/^[!-~]{1,10}$/);
const value = fc.array(word, { minLength: 1, maxLength: 4 }).map((w) => w.join(" "));
const stanzaArb = fc.uniqueArray(fc.tuple(name, value, fc.array(value, { maxLength: 3 })), { minLength: 1, maxLength: 8, selector: ([n]) => n.toLowerCase() });

test("property: random stanza sets round-trip through the parser", () => {
  fc.assert(
    fc.property(fc.array(stanzaArb, { maxLength: 6 }), (stanzas) => {
      const text = stanzas.map((st) => st.map(([n, v, cont]) => `${n}: ${v}\n${cont.map((c) => ` ${c}\n`).join("")}`).join("")).join("\n");
      const parsed = parseDeb822(text, "t");
      assert.equal(parsed.length, stanzas.length);
      parsed.forEach((p, i) => {
        const st = stanzas[i]!;
        assert.deepEqual([...p.fields.values()].map((f) => [f.name, f.value]), st.map(([n, v, cont]) => [n, [v, ...cont].join("\n")]));
      });
    }),
    { seed: SEED, numRuns: 500 },
  );
});

test("fuzz: mutations of the real dpkg status parse or are refused with a VigilError", () => {
  const real = readFileSync("/var/lib/dpkg/status").subarray(0, 64 << 10);
  fc.assert(
    fc.property(fc.array(fc.tuple(fc.nat(real.length - 1), fc.constantFrom(0x0a, 0x0d, 0x20, 0x09, 0x3a, 0x00, 0xff, 0x23, 0x41)), { minLength: 1, maxLength: 20 }), fc.nat(real.length), (muts, cut) => {
      const b = Buffer.from(real.subarray(0, cut));
      for (const [at, byte] of muts) if (at < b.length) b[at] = byte;
      try {
        for (const s of parseDeb822(b, "status")) assert.ok(s.fields.size > 0);
      } catch (e) {
        assert.ok(e instanceof VigilError, String(e));
      }
    }),
    { seed: SEED, numRuns: 400 },
  );
});

test("hostile shapes stay linear: one huge line, many tiny stanzas, a long run of blanks", () => {
  const cases = [
    `A:${" ".repeat(900_000)}x${" ".repeat(900_000)}\n`,
    "A: 1\n\n".repeat(150_000),
    `A: 1\n${" x\n".repeat(300_000)}`,
    "\n".repeat(2_000_000),
  ];
  for (const c of cases) {
    const t0 = performance.now();
    parseDeb822(c, "t", { ...DEB822_LIMITS, maxValueBytes: 4 << 20 });
    assert.ok(performance.now() - t0 < 3_000, `took ${performance.now() - t0} ms`);
  }
});
