/**
 * The exposition read back (the cluster manager merges its agents' `/metrics`): what renderExposition writes parses
 * to the same families, any text at all parses without throwing (bad lines skipped and counted), and a merge keeps
 * each family once with every source's samples labelled by that source.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { mergeExpositions, parseExposition, renderExposition, type MetricFamily } from "./prometheus.ts";

const name = fc.stringMatching(/^[a-zA-Z_:][a-zA-Z0-9_:]{0,20}$/);
const labelName = fc.stringMatching(/^[a-zA-Z_][a-zA-Z0-9_]{0,10}$/);
const value = fc.oneof(fc.integer(), fc.double(), fc.constantFrom(NaN, Infinity, -Infinity));
const family: fc.Arbitrary<MetricFamily> = fc.record({
  name,
  help: fc.string({ unit: "binary", maxLength: 40 }),
  type: fc.constantFrom("gauge" as const, "counter" as const),
  samples: fc.array(fc.record({ labels: fc.dictionary(labelName, fc.string({ unit: "binary", maxLength: 20 }), { maxKeys: 4 }), value }), { maxLength: 5 }),
});

test("what renderExposition writes, parseExposition reads back as the same families", () => {
  fc.assert(
    fc.property(fc.uniqueArray(family, { selector: (f) => f.name, maxLength: 6 }), (families) => {
      // The format has no -0: it is written as 0.
      const expected = families.map((f) => ({ ...f, samples: f.samples.map((s) => ({ labels: Object.fromEntries(Object.entries(s.labels)), value: Object.is(s.value, -0) ? 0 : s.value })) }));
      const back = parseExposition(renderExposition(families));
      assert.equal(back.skipped, 0);
      assert.deepEqual(back.families, expected);
    }),
    { numRuns: 300 },
  );
});

test("any text parses without throwing; what is not vigil's shape is skipped and counted", () => {
  fc.assert(
    fc.property(fc.string({ unit: "binary", maxLength: 400 }), (text) => {
      const r = parseExposition(text);
      assert.ok(r.skipped >= 0 && r.families.every((f) => f.type === "gauge" || f.type === "counter"));
    }),
    { numRuns: 500 },
  );
  const r = parseExposition(['orphan 1', "# TYPE a gauge", 'a{x="1"} 2', 'b 3', 'a{x="1",x="2"} 4', 'a{x="1"} 1e', "a 5", "# TYPE c histogram", "c 1"].join("\n"));
  assert.deepEqual(r.families, [{ name: "a", help: "", type: "gauge", samples: [{ labels: { x: "1" }, value: 2 }, { labels: {}, value: 5 }] }]);
  assert.equal(r.skipped, 6);
});

test("a merge keeps each family once, every source's samples labelled with the source's name", () => {
  const of = (host: string, v: number): MetricFamily[] => [{ name: "vigil_vm_running", help: "1 if running.", type: "gauge", samples: [{ labels: { vm: `vm-${host}`, host: "same-machine" }, value: v }] }];
  const merged = mergeExpositions([{ name: "h1", families: of("h1", 1) }, { name: "h2", families: of("h2", 0) }, { name: "h3", families: [{ name: "vigil_vm_running", help: "", type: "counter", samples: [{ labels: {}, value: 9 }] }] }], "host");
  assert.deepEqual(merged, [{ name: "vigil_vm_running", help: "1 if running.", type: "gauge", samples: [{ labels: { vm: "vm-h1", host: "h1" }, value: 1 }, { labels: { vm: "vm-h2", host: "h2" }, value: 0 }] }]);
  assert.equal(renderExposition(merged).match(/# TYPE vigil_vm_running/g)?.length, 1);
});
