/**
 * Rollback-safe time with real guests: the generation tree, a monotonic store that survives revert, restart and
 * a daemon crash mid-request, clone isolation, the security floor, single-use snapshots, and the seed's two
 * demonstrations — the one-time-password replay and the random numbers repeated after a resume — both ways.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { chmodSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { requireTinyImage, startDaemon, type DaemonHandle } from "../harness.ts";

type Vm = { id: string; name: string; state: string; vmgenid: string; generation: number };
type Gen = { generation: number; parentGeneration: number | null; reason: string; vmgenid: string; reseed: string | null; snapshot: string | null };

async function run(d: DaemonHandle, vm: string, ...argv: string[]): Promise<{ code: number; out: string }> {
  const r = await d.api<{ exitCode: number; stdout: string }>("POST", `/v1/vms/${vm}/guest/exec`, { argv });
  return { code: r.exitCode, out: Buffer.from(r.stdout, "base64").toString().trim() };
}
async function exec(d: DaemonHandle, vm: string, ...argv: string[]): Promise<string> {
  const r = await run(d, vm, ...argv);
  assert.equal(r.code, 0, `${argv.join(" ")} exited ${r.code}: ${r.out}`);
  return r.out;
}

/** S/Key: password i of n is H^(n-i)(seed), H = sha256 over the hex text (as the guest's otp-init). */
function otpPassword(seed: string, n: number, i: number): string {
  let x = seed;
  for (let k = 0; k < n - i; k++) x = createHash("sha256").update(x).digest("hex");
  return x;
}

test("generations: revert, clone and import each fork with a new vmgenid; the guest's reseed is checked", { timeout: 400_000 }, async (t) => {
  requireTinyImage();
  const d = await startDaemon(t);
  await d.api("POST", "/v1/vms", { name: "g", memoryMiB: 256 });
  await d.api("POST", "/v1/vms/g/start", { wait: true });
  await d.api("POST", "/v1/vms/g/snapshots", { name: "m", memory: true });
  await d.api("POST", "/v1/vms/g/snapshots/m/revert", {});
  await d.api("POST", "/v1/vms/g/snapshots/m/revert", {});
  const gens = await waitForReseed(d, "g", 3);
  assert.deepEqual(gens.generations.map((g) => [g.generation, g.parentGeneration, g.reason, g.snapshot]), [
    [1, null, "create", null],
    [2, 1, "revert", "m"],
    [3, 1, "revert", "m"],
  ]);
  assert.equal(new Set(gens.generations.map((g) => g.vmgenid)).size, 3, "every generation has its own vmgenid");
  assert.equal(gens.generations.find((g) => g.generation === 3)?.reseed, "seen", "the guest kernel logged the reseed");
  const { records } = await d.api<{ records: Array<{ action: string; details: { generation?: number } }> }>("GET", "/v1/audit?tail=true&limit=50");
  assert.ok(records.some((r) => r.action === "vm.reseed-verified" && r.details.generation === 3));

  await d.api("POST", "/v1/vms/g/kill");
  const clone = await d.api<Vm>("POST", "/v1/vms/g/clone", { name: "g2", mode: "full" });
  const cg = await d.api<{ generations: Gen[] }>("GET", "/v1/vms/g2/generations");
  assert.deepEqual(cg.generations.map((g) => [g.generation, g.reason]), [[1, "clone"]]);
  assert.equal(cg.generations[0]!.vmgenid, clone.vmgenid);
  const file = join(d.home, "g.vigil");
  assert.equal(d.cli("vm", "export", "g", "-o", file).status, 0);
  assert.equal(d.cli("vm", "import", file, "--name", "g3").status, 0);
  const ig = await d.api<{ generations: Gen[] }>("GET", "/v1/vms/g3/generations");
  assert.deepEqual(ig.generations.map((g) => [g.generation, g.reason]), [[1, "import"]]);
  assert.equal(d.cli("vm", "generations", "g").status, 0);
});

/** The generation tree once the guest's reseed for `generation` has been checked (it runs after the revert). */
async function waitForReseed(d: DaemonHandle, vm: string, generation: number) {
  for (let i = 0; ; i++) {
    const g = await d.api<{ generations: Gen[] }>("GET", `/v1/vms/${vm}/generations`);
    if (g.generations.some((x) => x.generation === generation && x.reseed !== null) || i >= 120) return g;
    await new Promise((r) => setTimeout(r, 500));
  }
}

test("the monotonic store never rolls back: revert, restart, and a daemon killed mid-request", { timeout: 400_000 }, async (t) => {
  requireTinyImage();
  // This daemon commits changes to counter "held" but never answers them (test hook): the kill below is then
  // certain to land between the commit and the answer — the case a retry must not apply twice.
  process.env.VIGIL_TEST_VTIME_HOLD_ANSWERS = "held";
  const d = await startDaemon(t);
  delete process.env.VIGIL_TEST_VTIME_HOLD_ANSWERS;
  await d.api("POST", "/v1/vms", { name: "m", memoryMiB: 256 });
  await d.api("POST", "/v1/vms/m/start", { wait: true });
  assert.equal(await exec(d, "m", "vtime", "incr", "c"), "1");
  await d.api("POST", "/v1/vms/m/snapshots", { name: "s", memory: true });
  assert.equal(await exec(d, "m", "vtime", "incr", "c"), "2");
  assert.equal(await exec(d, "m", "counter", "set", "2"), "2");
  await d.api("POST", "/v1/vms/m/snapshots/s/revert", {});
  assert.equal(await exec(d, "m", "counter", "get"), "0", "the guest's own counter rolled back");
  assert.equal(await exec(d, "m", "vtime", "read", "c"), "2", "the store did not");
  await d.api("POST", "/v1/vms/m/restart", { wait: true });
  assert.equal(await exec(d, "m", "vtime", "read", "c"), "2", "nor across a reboot");
  const t0 = Number(await exec(d, "m", "vtime", "time"));
  assert.ok(Math.abs(t0 - Date.now()) < 60_000, "the trusted clock is the host's");

  // Kill the daemon while the guest's incr is in flight — committed inside the daemon, its answer not sent —
  // and restart it (without the hook): the guest retries with the same request id.
  let answered = false;
  const pending = d.api("POST", "/v1/vms/m/guest/exec", { argv: ["vtime", "incr", "held"] }).then(
    () => (answered = true),
    () => undefined,
  );
  const heldLine = /"name":"held","rid":"([0-9a-f-]+)","result":\{"value":(\d+)\}[^\n]*vtime answer held/;
  for (let i = 0; i < 600 && !heldLine.test(d.log()); i++) await new Promise((r) => setTimeout(r, 50));
  const held = heldLine.exec(d.log());
  assert.ok(held, "the daemon committed the increment and held its answer");
  assert.equal(held[2], "1", "committed: 0 + 1");
  assert.equal(answered, false, "the guest has no answer yet");
  type Rec = { seq: number; action: string; actor: string; details: { name?: string; value?: number } };
  const before = (await d.api<{ records: Rec[] }>("GET", "/v1/audit?tail=true&limit=1")).records[0]?.seq ?? 0;
  await d.kill9();
  delete d.env.VIGIL_TEST_VTIME_HOLD_ANSWERS;
  await pending;
  assert.equal(answered, false, "the request was still in flight when the daemon died");
  await d.restart();
  // The guest's retry (same rid) reaches the new daemon and is answered from the store, not applied again: the
  // new daemon's first vtime change of the VM (audited as itself) is that answer, value 1 — not 2.
  let answer: Rec | undefined;
  for (let i = 0; i < 80 && !answer; i++) {
    const { records } = await d.api<{ records: Rec[] }>("GET", `/v1/audit?after=${before}&limit=1000`);
    answer = records.find((r) => r.actor === "vm:m" && r.action === "vtime.incr" && r.details.name === "held");
    if (!answer) await new Promise((r) => setTimeout(r, 500));
  }
  assert.equal(answer?.details.value, 1, "the retry reached the restarted daemon and got the stored answer");
  assert.equal(await exec(d, "m", "vtime", "read", "held"), "1", "the interrupted increment happened exactly once");
  assert.equal(await exec(d, "m", "vtime", "incr", "held"), "2");
});

test("a clone gets its own store; linking shares it on purpose", { timeout: 400_000 }, async (t) => {
  requireTinyImage();
  const d = await startDaemon(t);
  await d.api("POST", "/v1/vms", { name: "p", memoryMiB: 128 });
  await d.api("POST", "/v1/vms/p/start", { wait: true });
  assert.equal(await exec(d, "p", "vtime", "incr", "otp", "5"), "5");
  await d.api("POST", "/v1/vms/p/kill");
  await d.api("POST", "/v1/vms/p/clone", { name: "c", mode: "full" });
  await d.api("POST", "/v1/vms/c/start", { wait: true });
  assert.equal(await exec(d, "c", "vtime", "read", "otp"), "0", "the clone cannot read its parent's counters");
  assert.equal(await exec(d, "c", "vtime", "incr", "otp"), "1");
  const parent = await d.api<{ counters: Array<{ name: string; value: number }> }>("GET", "/v1/vms/p/vtime");
  assert.deepEqual(parent.counters.map((c) => [c.name, c.value]), [["otp", 5]], "nor advance them");
  await d.api("POST", "/v1/vms/c/vtime/link", { source: "p" });
  assert.equal(await exec(d, "c", "vtime", "read", "otp"), "5", "after an owner's link it shares them");
});

test("security floor: a revert below it is refused and audited; forced with a reason it runs the re-apply hook", { timeout: 400_000 }, async (t) => {
  requireTinyImage();
  const marker = join(tmpdir(), `vigil-reapply-${process.pid}`);
  const hook = `${marker}.sh`;
  writeFileSync(hook, `#!/bin/sh\necho "$VIGIL_VM $VIGIL_SNAPSHOT $VIGIL_REASON" > ${marker}\n`);
  chmodSync(hook, 0o755);
  t.after(() => {
    rmSync(hook, { force: true });
    rmSync(marker, { force: true });
  });
  const d = await startDaemon(t, { config: { hooks: { reapply: hook } } });
  await d.api("POST", "/v1/vms", { name: "f", memoryMiB: 128 });
  await d.api("PUT", "/v1/vms/f/floor", { facts: { patchLevel: "2.36-9+deb12u4", signatures: "100" } });
  await d.api("POST", "/v1/vms/f/snapshots", { name: "old" });
  await d.api("PUT", "/v1/vms/f/floor", { facts: { patchLevel: "2.36-9+deb12u7", signatures: "101" } });
  await assert.rejects(d.api("PUT", "/v1/vms/f/floor", { facts: { signatures: "99" } }), /the floor only rises/);

  await assert.rejects(d.api("POST", "/v1/vms/f/snapshots/old/revert", {}), (e: { message: string; status: number }) => {
    assert.equal(e.status, 422);
    assert.match(e.message, /below the security floor \(patchLevel 2\.36-9\+deb12u4 < 2\.36-9\+deb12u7, signatures 100 < 101\)/);
    return true;
  });
  const { records } = await d.api<{ records: Array<{ action: string; result: string }> }>("GET", "/v1/audit?tail=true&limit=3");
  assert.ok(records.some((r) => r.action === "snapshot.revert" && r.result === "error"), "the refusal is audited");
  await assert.rejects(d.api("POST", "/v1/vms/f/snapshots/old/revert", { force: true }), /needs a reason/);
  const forced = await d.api<{ forced: boolean; reapplied: { ran: boolean; exitCode: number } }>("POST", "/v1/vms/f/snapshots/old/revert", { force: true, reason: "restore after disk corruption" });
  assert.equal(forced.forced, true);
  assert.deepEqual([forced.reapplied.ran, forced.reapplied.exitCode], [true, 0]);
  assert.equal(readFileSync(marker, "utf8").trim(), "f old restore after disk corruption");
  const floor = await d.api<{ floor: Record<string, string> }>("GET", "/v1/vms/f/vtime");
  assert.equal(floor.floor.patchLevel, "2.36-9+deb12u7", "a forced revert does not lower the floor");
});

test("a single-use snapshot resumes once; the second resume is refused", { timeout: 400_000 }, async (t) => {
  requireTinyImage();
  const d = await startDaemon(t);
  await d.api("POST", "/v1/vms", { name: "once", memoryMiB: 256 });
  await d.api("POST", "/v1/vms/once/start", { wait: true });
  await d.api("POST", "/v1/vms/once/snapshots", { name: "key-material", memory: true, singleUse: true });
  await d.api("POST", "/v1/vms/once/snapshots/key-material/revert", {});
  const vm = await d.api<Vm>("GET", "/v1/vms/once");
  await assert.rejects(d.api("POST", "/v1/vms/once/snapshots/key-material/revert", {}), /single-use and was resumed already/);
  const after = await d.api<Vm>("GET", "/v1/vms/once");
  assert.deepEqual([after.state, after.vmgenid, after.generation], [vm.state, vm.vmgenid, vm.generation], "a refused revert leaves the VM as it was");
  await assert.rejects(d.api("POST", "/v1/vms/once/snapshots/key-material/revert", { force: true, reason: "please" }), /single-use/);
});

test("the seed's demonstrations: one-time-password replay after a revert, and repeated random numbers", { timeout: 500_000 }, async (t) => {
  requireTinyImage();
  const d = await startDaemon(t);
  await d.api("POST", "/v1/vms", { name: "otp", memoryMiB: 256 });
  await d.api("POST", "/v1/vms/otp/start", { wait: true });
  const seed = "s3cr3tseed";
  const N = 5;

  // Without the store: the attack works.
  await exec(d, "otp", "otp-init", seed, String(N));
  await d.api("POST", "/v1/vms/otp/snapshots", { name: "before-login", memory: true });
  const p1 = otpPassword(seed, N, 1);
  assert.equal(await exec(d, "otp", "otp-verify", p1), "accepted 1");
  assert.equal((await run(d, "otp", "otp-verify", p1)).out, "rejected: wrong password", "a replay without a revert fails");
  await d.api("POST", "/v1/vms/otp/snapshots/before-login/revert", {});
  assert.equal(await exec(d, "otp", "otp-verify", p1), "accepted 1", "ATTACK: after the revert the used password is accepted again");

  // With the verifier's count of used passwords in the monotonic store: the replay is rejected.
  await exec(d, "otp", "otp-init", seed, String(N), "store");
  await d.api("POST", "/v1/vms/otp/snapshots", { name: "before-login-2", memory: true });
  assert.equal(await exec(d, "otp", "otp-verify", p1), "accepted 1");
  await d.api("POST", "/v1/vms/otp/snapshots/before-login-2/revert", {});
  const replay = await run(d, "otp", "otp-verify", p1);
  assert.equal(replay.code, 1);
  assert.equal(replay.out, "rejected: password 1 was used already (monotonic store)", "DEFENCE: the replay is rejected");

  // Random numbers after a resume. A userspace pool seeded before the snapshot hands out the same values after
  // every resume — unless it listens for the VM fork that a new vmgenid announces.
  await exec(d, "otp", "rng-pool", "init");
  await d.api("POST", "/v1/vms/otp/snapshots", { name: "rng", memory: true });
  const draws = async (opts: Record<string, unknown>) => {
    const out: Array<{ aware: string; kernel: string }> = [];
    for (let i = 0; i < 2; i++) {
      await d.api("POST", "/v1/vms/otp/snapshots/rng/revert", opts);
      out.push({ aware: await exec(d, "otp", "rng-pool", "draw", "aware"), kernel: await exec(d, "otp", "rng-sample") });
    }
    return out;
  };
  const fresh = await draws({});
  assert.notEqual(fresh[0]!.aware, fresh[1]!.aware, "new vmgenid on each resume: the aware pool reseeds, the values differ");
  assert.notEqual(fresh[0]!.kernel, fresh[1]!.kernel, "and the kernel RNG differs too");
  const same = await draws({ unsafeKeepVmgenid: true });
  assert.equal(same[0]!.aware, same[1]!.aware, "without a new vmgenid the guest cannot tell: the same 'random' value repeats");
});
