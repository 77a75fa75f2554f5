import assert from "node:assert/strict";
import { dialectTest } from "../inventory/testing/dialects.ts";
import { testInventory } from "../inventory/testing/dialects.ts";
import { VigilError } from "../errors.ts";
import { HaClaims } from "./ha-claims.ts";

const VM = "0a1b2c3d-0000-4000-8000-000000000001";
const base = { vmId: VM, vmName: "web", lostEpoch: 3, from: "h1", to: "h2", by: "manager-a" };

dialectTest("an HA restart is claimed once per (VM, lost epoch), even by racing managers", async (t, dialect) => {
  const db = await testInventory(t, dialect);
  const a = new HaClaims(db);
  const b = new HaClaims(db);
  const results = await Promise.all([a.claim(base), b.claim({ ...base, to: "h3", by: "manager-b" })]);
  assert.equal(results.filter((r) => r.claimed).length, 1, "exactly one claimer wins");
  const loser = results.find((r) => !r.claimed)!;
  const winner = results.find((r) => r.claimed)!;
  assert.equal(loser.claim.to, winner.claim.to, "the loser sees the winner's claim");
  // A later tick sees the claim too.
  const again = await a.claim(base);
  assert.equal(again.claimed, false);
  assert.equal(again.claim.state, "claimed");
  // A newer lost epoch is a new restart.
  assert.equal((await a.claim({ ...base, lostEpoch: 4 })).claimed, true);
  assert.equal((await a.list()).length, 2);
});

dialectTest("a claim finishes once; a failed restart stays failed for its epoch", async (t, dialect) => {
  const db = await testInventory(t, dialect);
  const c = new HaClaims(db);
  await c.claim(base);
  await c.finish(VM, 3, { ok: false, error: "target refused" });
  const got = await c.get(VM, 3);
  assert.equal(got?.state, "failed");
  assert.equal(got?.error, "target refused");
  assert.ok(got?.finishedAt);
  await assert.rejects(c.finish(VM, 3, { ok: true }), (e: unknown) => e instanceof VigilError && e.code === "VIGIL_CONFLICT");
  assert.equal((await c.claim(base)).claimed, false, "a failed claim is not retaken");
});

dialectTest("claims validate their fields", async (t, dialect) => {
  const db = await testInventory(t, dialect);
  const c = new HaClaims(db);
  const field = (f: string) => (e: unknown) => e instanceof VigilError && e.code === "VIGIL_BAD_REQUEST" && e.field === f;
  await assert.rejects(c.claim({ ...base, vmId: "web" }), field("vmId"));
  await assert.rejects(c.claim({ ...base, lostEpoch: 0 }), field("lostEpoch"));
  await assert.rejects(c.claim({ ...base, lostEpoch: 1.5 }), field("lostEpoch"));
  await assert.rejects(c.claim({ ...base, to: "h1" }), field("to"));
  await assert.rejects(c.claim({ ...base, vmName: "" }), field("vmName"));
  assert.deepEqual(await c.list(), [], "nothing was written");
});
