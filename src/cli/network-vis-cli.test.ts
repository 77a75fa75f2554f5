/** `vigil net counters|mirror|captures|forward` as a user meets them, against an in-process daemon (no switch). */
import { test } from "node:test";
import assert from "node:assert/strict";
import { cli, daemon } from "./testing/cli-run.ts";

test("net forward refuses a non-loopback --listen naming the field; lists and captures print JSON; bad durations stop at the CLI", async (t) => {
  const { env } = await daemon(t);
  const bad = await cli(env, ["net", "forward", "web", "80", "--listen", "0.0.0.0:8080"]);
  assert.equal(bad.status, 2, bad.stderr);
  assert.match(bad.stderr, /listen address "0\.0\.0\.0" is not on host loopback \(only 127\.0\.0\.0\/8/);
  const missing = await cli(env, ["net", "forward", "web", "80"]);
  assert.match(missing.stderr, /Missing --listen/);
  const none = await cli(env, ["net", "forward", "nosuchvm", "80", "--listen", "127.0.0.1:8080"]);
  assert.match(none.stderr, /VM "nosuchvm" does not exist/);
  assert.deepEqual(JSON.parse((await cli(env, ["net", "forward", "list", "--json"])).stdout), []);
  assert.deepEqual(JSON.parse((await cli(env, ["net", "captures", "--json"])).stdout), []);
  const dur = await cli(env, ["net", "mirror", "web", "--duration", "2h"]);
  assert.equal(dur.status, 2);
  assert.match(dur.stderr, /Invalid --duration "2h"/);
  const rm = await cli(env, ["net", "forward", "remove", "abc"]);
  assert.match(rm.stderr, /Forward "abc" does not exist/);
});
