/** `vigil watch` options: limits named by flag, and merging into an existing watch instead of resetting it. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { ApiError } from "./client.ts";
import { parseGuestViewEvery, parseInterval, parsePolicy, watchBody } from "./watch-args.ts";

const flagError = (flag: string, re: RegExp) => (err: unknown) => err instanceof ApiError && err.code === "VIGIL_BAD_REQUEST" && err.field === flag && re.test(err.message);

test("--interval is checked in the CLI: 250ms..1h, named by its flag", () => {
  assert.equal(parseInterval("1s"), 1000);
  assert.equal(parseInterval("250ms"), 250);
  assert.equal(parseInterval("2m"), 120_000);
  assert.equal(parseInterval("1h"), 3_600_000);
  assert.equal(parseInterval("5"), 5000);
  assert.throws(() => parseInterval("100ms"), flagError("--interval", /^Invalid --interval "100ms": must be at least 250ms$/));
  assert.throws(() => parseInterval("2h"), flagError("--interval", /must be at most 1h/));
  assert.throws(() => parseInterval("soon"), flagError("--interval", /use e\.g\. 1s/));
  assert.throws(() => parseGuestViewEvery("0"), flagError("--guest-view-every", /from 1 to 3600/));
  assert.throws(() => parseGuestViewEvery("5000"), flagError("--guest-view-every", /from 1 to 3600/));
  assert.equal(parseGuestViewEvery("10"), 10);
  assert.throws(() => parsePolicy("kill"), flagError("--policy", /alert, pause, snapshot-and-pause/));
});

test("options not given keep the existing watch's values", () => {
  const existing = { intervalMs: 2000, policy: "snapshot-and-pause", guestViewEvery: 5, noNewModules: true };
  assert.deepEqual(watchBody({ intervalMs: 5000 }, existing), { intervalMs: 5000, policy: "snapshot-and-pause", guestViewEvery: 5, noNewModules: true }, "changing the interval keeps no-new-modules");
  assert.deepEqual(watchBody({ policy: "pause" }, existing), { intervalMs: 2000, policy: "pause", guestViewEvery: 5, noNewModules: true });
  assert.deepEqual(watchBody({ noNewModules: false }, existing), { intervalMs: 2000, policy: "snapshot-and-pause", guestViewEvery: 5, noNewModules: false });
  assert.equal(watchBody({}, existing), undefined, "no option: nothing to change");
});

test("a VM that is not watched gets the defaults 1s/alert/1 for what is not given", () => {
  assert.deepEqual(watchBody({}, null), { intervalMs: 1000, policy: "alert", guestViewEvery: 1, noNewModules: false });
  assert.deepEqual(watchBody({ policy: "pause" }, null), { intervalMs: 1000, policy: "pause", guestViewEvery: 1, noNewModules: false });
  assert.deepEqual(watchBody({ noNewModules: true }, null), { intervalMs: 1000, policy: "alert", guestViewEvery: 1, noNewModules: true });
});
