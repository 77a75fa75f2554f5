/** Host limits on a VM spec: MemTotal parsing and the memory bound. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { totalmem } from "node:os";
import { VigilError } from "../errors.ts";
import { checkHostLimits, parseMemTotalMiB, readHostFacts } from "./host-limits.ts";

test("MemTotal is read from /proc/meminfo text in MiB", () => {
  assert.equal(parseMemTotalMiB("MemTotal:       24576000 kB\nMemFree:         1000 kB\n"), 24000);
  assert.equal(parseMemTotalMiB("MemFree: 1 kB\n"), undefined);
  assert.equal(parseMemTotalMiB("MemTotal: lots kB\n"), undefined);
  // This host's own /proc/meminfo, checked against libuv's independent reading of the same MemTotal.
  const real = readHostFacts().memTotalMiB;
  assert.equal(real, Math.floor(totalmem() / (1024 * 1024)));
});

test("a VM may not have more memory than the host's MemTotal", () => {
  const host = { memTotalMiB: 24_000 };
  checkHostLimits({ memoryMiB: 24_000 }, host);
  assert.throws(
    () => checkHostLimits({ memoryMiB: 1_000_000 }, host),
    (err: unknown) => err instanceof VigilError && err.code === "VIGIL_INVALID_SPEC" && err.field === "memoryMiB" && /"memoryMiB" 1000000 is more than this host's memory \(at most 24000 MiB\)/.test(err.message),
  );
  // Unknown host memory: no bound here (the schema's own maximum still applies).
  checkHostLimits({ memoryMiB: 1_000_000 }, { memTotalMiB: undefined });
});
