import { test } from "node:test";
import assert from "node:assert/strict";
import { VigilError } from "../errors.ts";
import type { MigrationProgress } from "../cluster/types.ts";
import { runOutgoing, type OutgoingOptions } from "./precopy.ts";
import { DowntimeAdapter, parseMigrateInfo, type Qmp } from "./qmp-info.ts";
import { finishIncoming, prepareIncoming, watchIncoming } from "./incoming.ts";

type Answer = Record<string, unknown>;

/**
 * A scripted source QEMU: query-migrate answers come from `migrate` (the last one repeats), the mirror job becomes
 * ready after `readyAfter` polls and concludes `concludeAfter` polls after block-job-cancel; migrate_cancel turns
 * the migration into "cancelled" (leaving the vCPUs as they are, as QEMU does when it stopped them itself).
 */
function fakeSource(script: { migrate: Answer[]; readyAfter?: number; concludeAfter?: number; fail?: Record<string, string> }) {
  const log: { cmd: string; args: Record<string, unknown> | undefined }[] = [];
  const state = { running: true, migrateIdx: -1, cancelled: false, jobs: new Map<string, { polls: number; cancelledAt: number | undefined; concluded: boolean }>() };
  const qmp: Qmp = {
    async execute<T>(cmd: string, args?: Record<string, unknown>): Promise<T> {
      log.push({ cmd, args });
      if (script.fail?.[cmd]) throw new VigilError("VIGIL_QEMU", `QEMU refused "${cmd}": ${script.fail[cmd]}`);
      switch (cmd) {
        case "query-status":
          return { running: state.running, status: state.running ? "running" : "paused" } as T;
        case "query-migrate": {
          if (state.migrateIdx < 0) return {} as T;
          if (state.cancelled) return { status: "cancelled" } as T;
          const a = script.migrate[Math.min(state.migrateIdx++, script.migrate.length - 1)]!;
          if (a.status === "pre-switchover") state.running = false;
          return a as T;
        }
        case "migrate":
          state.migrateIdx = 0;
          return {} as T;
        case "migrate_cancel":
          state.cancelled = true;
          return {} as T;
        case "migrate-continue":
          return {} as T;
        case "cont":
          state.running = true;
          return {} as T;
        case "blockdev-mirror":
          state.jobs.set(String(args?.["job-id"]), { polls: 0, cancelledAt: undefined, concluded: false });
          return {} as T;
        case "block-job-cancel": {
          const j = state.jobs.get(String(args?.device));
          if (j) {
            j.cancelledAt = j.polls;
            if (args?.force) j.concluded = true;
          }
          return {} as T;
        }
        case "job-dismiss":
          state.jobs.delete(String(args?.id));
          return {} as T;
        case "query-block-jobs":
          return [...state.jobs].map(([id, j]) => {
            j.polls++;
            if (j.cancelledAt !== undefined && j.polls - j.cancelledAt > (script.concludeAfter ?? 1)) j.concluded = true;
            const ready = j.polls > (script.readyAfter ?? 2);
            return { device: id, type: "mirror", len: 1000, offset: ready ? 1000 : 500, ready, status: j.concluded ? "concluded" : ready ? "ready" : "running" };
          }) as T;
        default:
          return {} as T;
      }
    },
  };
  return { qmp, log, state, commands: () => log.map((l) => l.cmd).filter((c) => !c.startsWith("query-")) };
}

function options(over: Partial<OutgoingOptions> = {}): OutgoingOptions {
  return {
    tlsDir: "/run/vm/tls",
    tlsHostname: "m1.migration.vigil",
    migrateSocket: "/run/vm/mig.sock",
    nbdSocket: "/run/vm/nbd.sock",
    disks: [{ node: "vda", exportName: "vda", sync: "top" }],
    limits: { maxDowntimeMs: 300, timeoutMs: 10_000, maxBandwidth: 0 },
    pollMs: 1,
    ...over,
  };
}

const active = (sync: number, remaining: number, extra: Answer = {}): Answer => ({
  status: "active",
  "expected-downtime": 5,
  ram: { transferred: 1000 * sync, remaining, total: 4096, "dirty-sync-count": sync, "dirty-pages-rate": 2, "page-size": 4096 },
  ...extra,
});
const completed: Answer = {
  status: "completed",
  downtime: 12,
  "total-time": 900,
  ram: { transferred: 5000, remaining: 0, total: 4096, "dirty-sync-count": 3 },
};

test("runOutgoing: mirrors the disks, migrates with TLS and pause-before-switchover, completes the mirrors while paused", async () => {
  const f = fakeSource({ migrate: [active(1, 4000), active(2, 100), { status: "pre-switchover" }, { status: "device" }, completed] });
  const phases: MigrationProgress[] = [];
  const phaseSeq = () => phases.map((p) => p.phase).filter((p, i, a) => i === 0 || a[i - 1] !== p);
  const result = await runOutgoing(f.qmp, options({ onProgress: (p) => phases.push(p) }));
  assert.deepEqual(f.commands(), [
    "object-add", "blockdev-add", "blockdev-mirror", "migrate-set-capabilities", "migrate-set-parameters", "migrate",
    "block-job-cancel", "job-dismiss", "blockdev-del", "migrate-continue", "object-del",
  ]);
  const args = (cmd: string) => f.log.find((l) => l.cmd === cmd)?.args;
  assert.deepEqual(args("object-add"), { "qom-type": "tls-creds-x509", id: "vigil-mig-tls", dir: "/run/vm/tls", endpoint: "client", "verify-peer": true });
  assert.deepEqual(args("blockdev-add"), {
    driver: "nbd", "node-name": "vigil-mig-nbd0", server: { type: "unix", path: "/run/vm/nbd.sock" }, export: "vda",
    "tls-creds": "vigil-mig-tls", "tls-hostname": "m1.migration.vigil",
  });
  assert.deepEqual(args("blockdev-mirror"), { "job-id": "vigil-mig-mirror0", device: "vda", target: "vigil-mig-nbd0", sync: "top", "auto-dismiss": false });
  assert.deepEqual(
    (args("migrate-set-capabilities")?.capabilities as { capability: string }[]).map((c) => c.capability),
    ["pause-before-switchover", "auto-converge", "events", "return-path"],
  );
  assert.deepEqual(args("migrate-set-parameters"), { "tls-creds": "vigil-mig-tls", "tls-hostname": "m1.migration.vigil", "downtime-limit": 10, "max-bandwidth": 2 ** 40 });
  assert.deepEqual(args("migrate"), { uri: "unix:/run/vm/mig.sock" });
  assert.deepEqual(args("block-job-cancel"), { device: "vigil-mig-mirror0" }, "a soft cancel: a READY mirror completes");
  assert.deepEqual(args("migrate-continue"), { state: "pre-switchover" });
  // the mirror is RAM-phase-only until ready: migrate is issued only after every job reported ready
  const migrateAt = f.log.findIndex((l) => l.cmd === "migrate");
  const readyPolls = f.log.slice(0, migrateAt).filter((l) => l.cmd === "query-block-jobs").length;
  assert.ok(readyPolls >= 3, `migrate after the mirror was ready (${readyPolls} polls)`);
  assert.equal(result.downtimeMs, 12);
  assert.equal(result.iterations, 3);
  assert.equal(result.ramTransferred, 5000);
  assert.equal(result.diskTransferred, 1000);
  assert.equal(result.finalDowntimeLimitMs, 10);
  assert.deepEqual(phaseSeq(), ["setup", "disks", "ram", "switchover", "completed"], "phases in order, none repeated after it ended");
  const ram = phases.find((p) => p.phase === "ram" && p.iterations === 1)!;
  assert.equal(ram.dirtyRate, 2 * 4096);
  assert.equal(ram.ramRemaining, 4000);
  assert.equal(ram.diskTotal, 1000);
});

test("a completed read before QEMU computed the downtime (0) is read again for the figures", async () => {
  const early: Answer = { ...completed, downtime: 0, "total-time": 0 };
  const f = fakeSource({ migrate: [active(1, 10), { status: "pre-switchover" }, early, early, completed], readyAfter: 0 });
  const result = await runOutgoing(f.qmp, options());
  assert.equal(result.downtimeMs, 12);
  const g = fakeSource({ migrate: [active(1, 10), { status: "pre-switchover" }, early], readyAfter: 0 });
  assert.equal((await runOutgoing(g.qmp, options())).downtimeMs, 0, "QEMU never says more: 0 after a bounded wait, not a hang");
});

test("the downtime limit doubles only after a pass that did not shrink what remains, and never above the maximum", async () => {
  const f = fakeSource({
    migrate: [
      active(1, 100_000), active(1, 90_000), // the bulk pass
      active(2, 120_000), // grew: 20
      active(2, 130_000), // same pass: no step
      active(3, 80_000), // shrank: no step
      active(4, 80_000), // did not shrink: 40
      active(5, 90_000), active(6, 95_000), active(7, 99_000), // 80, 160, 300 (capped)
      active(8, 99_500), // at the maximum: stays
      { status: "pre-switchover" }, completed,
    ],
    readyAfter: 0,
  });
  const result = await runOutgoing(f.qmp, options({ disks: [], limits: { maxDowntimeMs: 300, timeoutMs: 10_000, maxBandwidth: 1_000_000 } }));
  const limits = f.log.filter((l) => l.cmd === "migrate-set-parameters").map((l) => l.args?.["downtime-limit"]);
  assert.deepEqual(limits, [10, 20, 40, 80, 160, 300]);
  assert.equal(f.log.find((l) => l.cmd === "migrate-set-parameters")?.args?.["max-bandwidth"], 1_000_000);
  assert.equal(result.finalDowntimeLimitMs, 300);
  assert.ok(!f.commands().includes("block-job-cancel"), "no disks, no mirrors");
});

test("DowntimeAdapter: a steady shrink never raises the limit; a maximum below the start caps it", () => {
  const a = new DowntimeAdapter(10, 300);
  for (let i = 1; i < 50; i++) assert.equal(a.observe(i, 10_000 - i * 100), undefined);
  assert.equal(a.limitMs, 10);
  const b = new DowntimeAdapter(10, 10);
  b.observe(1, 5);
  assert.equal(b.observe(2, 50), undefined);
  assert.equal(b.limitMs, 10);
});

for (const phase of ["disks", "ram", "switchover"] as const) {
  test(`a cancel during "${phase}" undoes this side and leaves the VM running`, async () => {
    const f = fakeSource({
      migrate: [active(1, 4000), active(2, 3000), { status: "pre-switchover" }],
      readyAfter: phase === "disks" ? 1_000_000 : 1,
      concludeAfter: 1_000_000, // the soft cancel at switchover never finishes: the cancel must interrupt it
    });
    const controller = new AbortController();
    const err = await runOutgoing(
      f.qmp,
      options({
        signal: controller.signal,
        onProgress: (p) => {
          if (p.phase === phase && (phase !== "disks" || p.diskTotal > 0)) controller.abort();
        },
      }),
    ).then(() => assert.fail("resolved"), (e: unknown) => e);
    assert.ok(err instanceof VigilError);
    assert.equal(err.code, "VIGIL_CONFLICT");
    assert.match(err.message, /Migration cancelled at step .*the VM keeps running here/);
    const cmds = f.commands();
    assert.equal(cmds.includes("migrate_cancel"), phase !== "disks", "migrate_cancel once migrate was issued");
    assert.ok(f.log.some((l) => l.cmd === "block-job-cancel" && l.args?.force === true), "the mirror is force-cancelled");
    assert.ok(cmds.includes("job-dismiss"));
    assert.deepEqual(f.log.filter((l) => l.cmd === "blockdev-del").map((l) => l.args?.["node-name"]), ["vigil-mig-nbd0"]);
    assert.deepEqual(f.log.filter((l) => l.cmd === "object-del").map((l) => l.args?.id), ["vigil-mig-tls"]);
    assert.equal(cmds.includes("cont"), phase === "switchover", "cont only when the source was paused at pre-switchover");
    assert.equal(cmds.includes("migrate-continue"), false);
    assert.equal(f.state.running, true);
  });
}

test("the timeout cancels a migration that never converges", async () => {
  const f = fakeSource({ migrate: [active(1, 4000)], readyAfter: 0 });
  const started = Date.now();
  await assert.rejects(runOutgoing(f.qmp, options({ pollMs: 5, limits: { maxDowntimeMs: 300, timeoutMs: 200, maxBandwidth: 0 } })), (e: unknown) => {
    assert.ok(e instanceof VigilError);
    assert.equal(e.code, "VIGIL_TIMEOUT");
    assert.match(e.message, /timed out after 200 ms at step "copy the RAM"/);
    return true;
  });
  assert.ok(Date.now() - started < 5000);
  assert.ok(f.commands().includes("migrate_cancel"));
  assert.ok(f.commands().includes("blockdev-del"));
});

test("QEMU reporting failed gives its reason and the clean-up", async () => {
  const f = fakeSource({ migrate: [active(1, 4000), { status: "failed", "error-desc": "TLS handshake failed" }], readyAfter: 0 });
  await assert.rejects(runOutgoing(f.qmp, options()), /failed at step "copy the RAM": QEMU reports the migration failed: TLS handshake failed/);
  assert.ok(f.commands().includes("object-del"));
  assert.ok(!f.commands().includes("cont"), "the VM never paused");
});

test("a refused command names its step, and what was added before it is removed", async () => {
  const f = fakeSource({ migrate: [], fail: { "blockdev-mirror": "Device 'vda' not found" } });
  await assert.rejects(runOutgoing(f.qmp, options()), /failed at step "start the mirror of disk \\"vda\\"": QEMU refused "blockdev-mirror"/);
  assert.deepEqual(f.commands(), ["object-add", "blockdev-add", "blockdev-mirror", "blockdev-del", "object-del"]);
});

test("a cancel that loses the race to completion reports the completed migration", async () => {
  const f = fakeSource({ migrate: [active(1, 10), completed], readyAfter: 0 });
  const controller = new AbortController();
  const origExecute = f.qmp.execute.bind(f.qmp);
  f.qmp.execute = (async (cmd: string, args?: Record<string, unknown>) => {
    if (cmd === "migrate_cancel") return {}; // too late: QEMU has switched over
    return origExecute(cmd, args);
  }) as Qmp["execute"];
  const result = await runOutgoing(f.qmp, options({ signal: controller.signal, onProgress: (p) => p.phase === "ram" && controller.abort() }));
  assert.equal(result.downtimeMs, 12);
  assert.ok(!f.commands().includes("cont"), "never resumes a source whose VM now runs on the target");
});

test("a source whose VM has already migrated away (postmigrate) is refused; one whose VM arrived by migration is not", async () => {
  const f = fakeSource({ migrate: [] });
  const origExecute = f.qmp.execute.bind(f.qmp);
  let state = "postmigrate";
  f.qmp.execute = (async (cmd: string, args?: Record<string, unknown>) => {
    if (cmd === "query-migrate") return { status: "completed" };
    if (cmd === "query-status") return { running: state === "running", status: state };
    return origExecute(cmd, args);
  }) as Qmp["execute"];
  await assert.rejects(runOutgoing(f.qmp, options()), /already migrated its VM away/);
  assert.deepEqual(f.commands(), [], "no cont: resuming it would fork the VM");
  // a VM that arrived by migration (query-migrate also says completed there) and runs may migrate on
  state = "running";
  await runOutgoing(f.qmp, options({ disks: [] })); // (this fake's query-migrate says completed at once)
  assert.deepEqual(f.commands().slice(0, 2), ["object-add", "migrate-set-capabilities"]);
});

test("bad options are refused before anything is sent to QEMU", async () => {
  const f = fakeSource({ migrate: [] });
  await assert.rejects(runOutgoing(f.qmp, options({ disks: [{ node: "vda; rm", exportName: "x", sync: "top" }] })), (e: unknown) => {
    assert.ok(e instanceof VigilError);
    assert.equal(e.field, "disks.0.node");
    assert.match(e.message, /must be a QEMU node name/);
    return true;
  });
  await assert.rejects(runOutgoing(f.qmp, options({ limits: { maxDowntimeMs: 5, timeoutMs: 1000, maxBandwidth: 0 } })), /"limits.maxDowntimeMs"/);
  await assert.rejects(runOutgoing(f.qmp, options({ tlsHostname: "a b" })), /"tlsHostname" must be a DNS name/);
  assert.equal(f.log.length, 0);
});

test("parseMigrateInfo clamps what QEMU reports", () => {
  const info = parseMigrateInfo({ status: "weird", ram: { transferred: -5, remaining: 1e300, "dirty-sync-count": 1.5, "dirty-pages-rate": "x" }, "cpu-throttle-percentage": 900 });
  assert.equal(info.status, "unknown");
  assert.equal(info.transferred, 0);
  assert.equal(info.remaining, Number.MAX_SAFE_INTEGER);
  assert.equal(info.dirtySyncCount, 1);
  assert.equal(info.dirtyRate, 0);
  assert.equal(info.throttlePercent, 100);
});

/** A scripted target QEMU for the incoming side. */
function fakeTarget(fail?: string, migrate: Answer[] = [{ status: "completed" }]) {
  const log: { cmd: string; args: Record<string, unknown> | undefined }[] = [];
  let i = 0;
  const qmp: Qmp = {
    async execute<T>(cmd: string, args?: Record<string, unknown>): Promise<T> {
      log.push({ cmd, args });
      if (cmd === fail) throw new VigilError("VIGIL_QEMU", `QEMU refused "${cmd}": no`);
      if (cmd === "query-migrate") return migrate[Math.min(i++, migrate.length - 1)] as T;
      return {} as T;
    },
  };
  return { qmp, log, commands: () => log.map((l) => l.cmd) };
}

const incoming = {
  tlsDir: "/run/vm/tls",
  authzIdentity: "O=vigil,OU=migration,CN=m1-src",
  migrateSocket: "/run/vm/mig.sock",
  nbdSocket: "/run/vm/nbd.sock",
  disks: [{ node: "vda", exportName: "vda" }],
};

test("prepareIncoming: server credentials with verify-peer, the source's DN, TLS on both channels, writable exports", async () => {
  const f = fakeTarget();
  await prepareIncoming(f.qmp, incoming);
  assert.deepEqual(f.log, [
    { cmd: "object-add", args: { "qom-type": "tls-creds-x509", id: "vigil-mig-tls", dir: "/run/vm/tls", endpoint: "server", "verify-peer": true } },
    { cmd: "object-add", args: { "qom-type": "authz-simple", id: "vigil-mig-authz", identity: "O=vigil,OU=migration,CN=m1-src" } },
    { cmd: "migrate-set-capabilities", args: { capabilities: [{ capability: "events", state: true }, { capability: "return-path", state: true }] } },
    { cmd: "migrate-set-parameters", args: { "tls-creds": "vigil-mig-tls", "tls-authz": "vigil-mig-authz" } },
    { cmd: "migrate-incoming", args: { uri: "unix:/run/vm/mig.sock" } },
    { cmd: "nbd-server-start", args: { addr: { type: "unix", data: { path: "/run/vm/nbd.sock" } }, "tls-creds": "vigil-mig-tls", "tls-authz": "vigil-mig-authz" } },
    { cmd: "block-export-add", args: { type: "nbd", id: "vigil-mig-export0", "node-name": "vda", name: "vda", writable: true } },
  ]);
});

test("prepareIncoming: a failed export removes the server and the objects again", async () => {
  const f = fakeTarget("block-export-add");
  await assert.rejects(prepareIncoming(f.qmp, incoming), /Cannot prepare the incoming migration at step "export disk \\"vda\\""/);
  assert.deepEqual(f.commands().slice(-3), ["nbd-server-stop", "object-del", "object-del"]);
  await assert.rejects(prepareIncoming(fakeTarget().qmp, { ...incoming, migrateSocket: "relative.sock" }), /"migrateSocket" must be an absolute path/);
});

test("watchIncoming resolves on completed, rejects on failed and on cancel; finishIncoming stops NBD before cont", async () => {
  const ok = fakeTarget(undefined, [{ status: "active" }, { status: "active" }, { status: "completed" }]);
  await watchIncoming(ok.qmp, undefined, { pollMs: 1 });
  await finishIncoming(ok.qmp);
  assert.deepEqual(ok.commands().filter((c) => c !== "query-migrate"), ["nbd-server-stop", "cont", "migrate-set-parameters", "object-del", "object-del"]);
  await assert.rejects(watchIncoming(fakeTarget(undefined, [{ status: "failed", "error-desc": "load of migration failed" }]).qmp, undefined, { pollMs: 1 }), /load of migration failed/);
  const c = new AbortController();
  const w = watchIncoming(fakeTarget(undefined, [{ status: "active" }]).qmp, c.signal, { pollMs: 1 });
  c.abort();
  await assert.rejects(w, /cancelled/);
  const early = fakeTarget(undefined, [{ status: "active" }]);
  await assert.rejects(finishIncoming(early.qmp), /incoming migration is active, not completed/);
  assert.ok(!early.commands().includes("cont"));
});

test("beforeSwitchover runs while the guest is paused, after the mirrors completed and before migrate-continue", async () => {
  const f = fakeSource({ migrate: [active(1, 4000), active(2, 100), { status: "pre-switchover" }, { status: "device" }, completed] });
  let seen: string[] = [];
  await runOutgoing(f.qmp, options({ beforeSwitchover: async () => void (seen = [...f.commands()]) }));
  assert.ok(seen.includes("block-job-cancel") && !seen.includes("migrate-continue"), seen.join(" "));
  assert.equal(f.state.running, false, "still paused: the target has it");
});

test("a failing beforeSwitchover aborts the migration and resumes the VM here", async () => {
  const f = fakeSource({ migrate: [active(1, 4000), active(2, 100), { status: "pre-switchover" }] });
  const err = await runOutgoing(f.qmp, options({ beforeSwitchover: async () => Promise.reject(new VigilError("VIGIL_HOST", "target unreachable")) })).then(
    () => assert.fail("resolved"),
    (e: unknown) => e,
  );
  assert.ok(err instanceof VigilError);
  assert.match(err.message, /hand over/);
  assert.ok(f.commands().includes("migrate_cancel"));
  assert.ok(!f.commands().includes("migrate-continue"));
  assert.equal(f.state.running, true, "the VM runs on the source again");
});

test("the negotiated capabilities are the ones enabled; a set without the required three is refused before QEMU is asked", async () => {
  const f = fakeSource({ migrate: [completed] });
  await runOutgoing(f.qmp, options({ disks: [], capabilities: ["return-path", "pause-before-switchover", "events"] }));
  const caps = f.log.find((l) => l.cmd === "migrate-set-capabilities")?.args?.capabilities as { capability: string; state: boolean }[];
  assert.deepEqual(caps, [{ capability: "return-path", state: true }, { capability: "pause-before-switchover", state: true }, { capability: "events", state: true }], "no auto-converge when not negotiated");
  const g = fakeSource({ migrate: [completed] });
  await assert.rejects(runOutgoing(g.qmp, options({ disks: [], capabilities: ["pause-before-switchover", "events"] })), /"capabilities" must include pause-before-switchover, events and return-path/);
  assert.equal(g.log.length, 0);
});
