/** RollingMedian: bounded whatever is added, and always the median of exactly the last `max` values. */
import { test } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { RollingMedian } from "./rolling-median.ts";

test("the median of the last max values, never more kept; none before the first", () => {
  assert.equal(new RollingMedian(3).median, null);
  assert.throws(() => new RollingMedian(0), RangeError);
  fc.assert(
    fc.property(fc.integer({ min: 1, max: 50 }), fc.array(fc.integer({ min: -1e6, max: 1e6 }), { maxLength: 300 }), (max, xs) => {
      const m = new RollingMedian(max);
      for (const x of xs) m.add(x);
      const last = xs.slice(-max).sort((a, b) => a - b);
      assert.equal(m.size, last.length);
      assert.equal(m.median, last.length ? last[last.length >> 1] : null);
    }),
  );
});
