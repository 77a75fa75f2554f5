/**
 * The migration engine against two real QEMUs on this host (spawned here, not through vigil; TCG, 256 MiB,
 * 1 vCPU, the tiny guest): a guest counting in RAM every ~20 ms and logging each value to its disk is migrated
 * with its disk mirrored over NBD, both channels in QEMU's TLS. Refusals (a foreign CA, another certificate's
 * DN, the DN in the wrong order) and a cancel leave the source running and counting. The sockets are unix
 * sockets in a temp dir; no network traffic at all.
 */
import { test, type TestContext } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { randomBytes } from "node:crypto";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { VigilError } from "../../src/errors.ts";
import { prepareIncoming, watchIncoming, finishIncoming } from "../../src/migration/incoming.ts";
import { runOutgoing } from "../../src/migration/precopy.ts";
import type { MigrationProgress } from "../../src/cluster/types.ts";
import type { AgentClient } from "../../src/guest-agent/agent-client.ts";
import { agentOf, guestRun, makeMigrationCerts, overlay, standaloneDisk, startQemu, type TestQemu } from "../migration-fixture.ts";

const LIMITS = { maxDowntimeMs: 300, timeoutMs: 180_000, maxBandwidth: 0 };
/** The DN QEMU (GnuTLS) reports for a peer certificate: the subject's RDNs in certificate order. */
const dnOf = (cn: string) => `O=vigil,OU=migration,CN=${cn}`;

function parseReport(line: string): Record<string, string> {
  return Object.fromEntries(line.split(" ").map((kv) => kv.split("=") as [string, string]));
}

test("pre-copy migration with NBD disk mirror over QEMU's TLS, refusals and cancel", { timeout: 900_000 }, async (t: TestContext) => {
  const dir = mkdtempSync(join(tmpdir(), "vt-mig-"));
  const vms: TestQemu[] = [];
  let agent: AgentClient | undefined;
  t.after(async () => {
    agent?.close();
    for (const vm of vms) await vm.kill();
    rmSync(dir, { recursive: true, force: true });
  });
  const certs = makeMigrationCerts(join(dir, "certs"), "m1");
  // disk0: the guest's /data, an overlay over the image's disk on both sides (sync=top); disk1: 16 MiB of random
  // bytes the guest never writes, copied whole into an empty image on the target (sync=full)
  const disk1Sum = standaloneDisk(join(dir, "src-1.qcow2"), 16, true);
  const src = await startQemu(join(dir, "src"), { disk: overlay(join(dir, "src.qcow2")), disk1: join(dir, "src-1.qcow2") });
  vms.push(src);
  agent = await agentOf(src);
  assert.equal(await guestRun(agent, ["ticker", "start"]), "started");
  const token = randomBytes(12).toString("hex");
  await guestRun(agent, ["data-write", "premig", token]);

  let n = 0;
  /** A fresh target waiting for the migration, over its own empty overlay of the same base (sync=top). */
  const target = async (authzIdentity: string) => {
    const name = `dst${n++}`;
    standaloneDisk(join(dir, `${name}-1.qcow2`), 16, false);
    const vm = await startQemu(join(dir, name), { disk: overlay(join(dir, `${name}.qcow2`)), disk1: join(dir, `${name}-1.qcow2`), incoming: true });
    vms.push(vm);
    const sockets = { migrateSocket: join(dir, `${name}-mig.sock`), nbdSocket: join(dir, `${name}-nbd.sock`) };
    const disks = [{ node: "disk0", exportName: "disk0" }, { node: "disk1", exportName: "disk1" }];
    await prepareIncoming(vm.qmp, { tlsDir: certs.serverDir, authzIdentity, ...sockets, disks });
    return { vm, sockets };
  };
  const outgoing = (sockets: { migrateSocket: string; nbdSocket: string }, over: Partial<Parameters<typeof runOutgoing>[1]> = {}) =>
    runOutgoing(src.qmp, { tlsDir: certs.clientDir, tlsHostname: certs.hostname, ...sockets, disks: [{ node: "disk0", exportName: "disk0", sync: "top" }, { node: "disk1", exportName: "disk1", sync: "full" }], limits: LIMITS, ...over });
  /** The source still runs and its counter still ticks. */
  const stillTicking = async () => {
    const status = (await src.qmp.execute<{ running: boolean; status: string }>("query-status"));
    assert.equal(status.status, "running");
    const a = Number(parseReport(await guestRun(agent!, ["ticker", "report"])).value);
    await new Promise((r) => setTimeout(r, 500));
    const b = Number(parseReport(await guestRun(agent!, ["ticker", "report"])).value);
    assert.ok(b > a, `the counter ticks on the source (${a} → ${b})`);
  };
  const refused = async (p: Promise<unknown>, step: RegExp) => {
    const err = await p.then(() => assert.fail("the migration was not refused"), (e: unknown) => e);
    assert.ok(err instanceof VigilError, String(err));
    assert.match(err.message, step);
    const jobs = await src.qmp.execute<unknown[]>("query-block-jobs");
    assert.deepEqual(jobs, [], "no mirror left behind");
    const nodes = await src.qmp.execute<{ "node-name": string }[]>("query-named-block-nodes", { flat: true });
    assert.deepEqual(nodes.filter((x) => x["node-name"].startsWith("vigil-mig")), [], "no NBD node left behind");
    await stillTicking();
    return err;
  };

  await t.test("a client certificate from a foreign CA is refused by the target", async () => {
    const { sockets } = await target(dnOf("m1-src"));
    await refused(outgoing(sockets, { tlsDir: certs.foreignClientDir }), /step "connect disk \\"disk0\\" to the target's NBD export".*TLS/);
  });

  await t.test("the source refuses a target whose certificate does not name the expected host", async () => {
    const { sockets } = await target(dnOf("m1-src"));
    await refused(outgoing(sockets, { tlsHostname: "m2.migration.vigil" }), /NBD export.*(hostname|m2\.migration\.vigil)/i);
  });

  await t.test("the DN must be given as QEMU reports it: in certificate order, not RFC 2253's reversed order", async () => {
    assert.equal(certs.clientSubjectRfc2253, "CN=m1-src,OU=migration,O=vigil");
    const { vm, sockets } = await target(certs.clientSubjectRfc2253);
    await refused(outgoing(sockets), /NBD export/);
    assert.match(vm.stderr(), /TLS x509 authz check for O=vigil,OU=migration,CN=m1-src is denied/);
  });

  await t.test("a right-CA certificate of another name is refused on the migration channel (tls-authz)", async () => {
    const { vm, sockets } = await target(dnOf("m1-src"));
    await refused(outgoing(sockets, { tlsDir: certs.otherClientDir, disks: [] }), /step "copy the RAM": QEMU reports the migration failed/);
    assert.match(vm.stderr(), /authz check for O=vigil,OU=migration,CN=m1-other is denied/);
  });

  await t.test("a cancel in the RAM phase leaves the source running and counting", async () => {
    const { sockets } = await target(dnOf("m1-src"));
    const controller = new AbortController();
    // 4 MiB/s: the RAM copy lasts long enough to be caught in the middle
    const err = await refused(
      outgoing(sockets, {
        limits: { ...LIMITS, maxBandwidth: 4 << 20 },
        signal: controller.signal,
        onProgress: (p) => p.phase === "ram" && p.ramTransferred > 1 << 20 && controller.abort(),
      }),
      /Migration cancelled at step "copy the RAM"/,
    );
    assert.equal((err as VigilError).code, "VIGIL_CONFLICT");
    const mig = await src.qmp.execute<{ status: string }>("query-migrate");
    assert.equal(mig.status, "cancelled");
  });

  await t.test("the migrated guest keeps counting on the target with no value missing; its disk came along", async () => {
    const { vm, sockets } = await target(dnOf("m1-src"));
    const watch = watchIncoming(vm.qmp, undefined, { timeoutMs: LIMITS.timeoutMs });
    watch.catch(() => undefined);
    const before = Number(parseReport(await guestRun(agent!, ["ticker", "report"])).value);
    const progress: MigrationProgress[] = [];
    const result = await outgoing(sockets, { onProgress: (p) => progress.push(p) });
    await watch;
    await finishIncoming(vm.qmp);
    agent!.close();
    agent = await agentOf(vm, 30_000);
    await new Promise((r) => setTimeout(r, 1000));
    const running = parseReport(await guestRun(agent, ["ticker", "report"]));
    if (running.running !== "yes") {
      const ps = (await guestRun(agent, ["ps"])).split("\n").filter((l) => /ticker|usleep/.test(l));
      const tail = await guestRun(agent, ["tail", "-n", "3", "/data/ticker.log"]);
      assert.fail(`the ticker does not run on the target: ${JSON.stringify(running)}; ps: ${ps.join(" | ")}; log tail: ${tail}`);
    }
    assert.equal(await guestRun(agent, ["ticker", "stop"]), "stopped");
    const r = parseReport(await guestRun(agent, ["ticker", "report"]));
    assert.equal(r.gaps, "0", `no value missing in the log (${JSON.stringify(r)})`);
    assert.equal(r.first, "1");
    assert.equal(r.lines, r.last);
    assert.equal(r.value, r.last, "RAM and disk agree");
    assert.ok(Number(r.last) > before + 25, `it counted on after the switchover (${before} → ${r.last})`);
    assert.equal(await guestRun(agent, ["cat", "/data/premig"]), token, "a file written (and synced) before the migration is on the target's disk");
    const sum = (await guestRun(agent, ["sha256sum", "/dev/vdb"])).split(" ")[0];
    assert.equal(sum, disk1Sum, "the sync=full disk arrived whole in the empty target image");
    assert.equal((await src.qmp.execute<{ status: string }>("query-status")).status, "postmigrate", "the source stopped at the switchover");
    assert.ok(result.downtimeMs > 0 && result.downtimeMs < 2000, `downtime ${result.downtimeMs} ms`);
    assert.ok(result.ramTransferred > 0 && result.iterations >= 2);
    assert.ok(result.diskTransferred >= 16 << 20, `disk bytes ${result.diskTransferred}`);
    const phases = [...new Set(progress.map((p) => p.phase))];
    assert.deepEqual(phases, ["setup", "disks", "ram", "switchover", "completed"]);
    t.diagnostic(`migration: downtime ${result.downtimeMs} ms, total ${result.totalMs} ms, ${result.iterations} passes, limit ${result.finalDowntimeLimitMs} ms`);
  });
});
