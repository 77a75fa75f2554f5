/**
 * A shadow replay trailing a live recording, with real QEMUs (tiny guest, TCG): the recording's raw log is tailed
 * by a LogCompressor (into log.zst) and by a LogFollower (into a FIFO a second QEMU replays from). The shadow stops
 * at a replay-break both runs pass; its RAM must equal that of a third QEMU replaying the finished, stored and
 * expanded log to the same icount.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { createHash } from "node:crypto";
import { copyFileSync, createReadStream, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { QmpClient } from "../../src/qemu/qmp-client.ts";
import { LogCompressor, LogFollower, expandLog } from "../../src/recording/log-store.ts";
import { summarizeReplayLog } from "../../src/recording/replay-log.ts";
import { pollFor } from "../harness.ts";

const ROOT = join(import.meta.dirname, "..", "..");
const RAM = 128 * 1024 * 1024;
const BREAK = 1_000_000_000;

function tinyDir(): string {
  const r = spawnSync("bash", [join(ROOT, "guest", "build-tiny.sh"), "--print-dir"], { encoding: "utf8" });
  if (r.status !== 0) throw new Error("The tiny guest image is not built: set-up (npm test) must build it with guest/build-tiny.sh");
  return r.stdout.trim();
}

/** The record/replay command line measured in /tmp/rr/rec.sh: blkreplay disk, no NIC, serial on a unix socket. */
function qemu(dir: string, image: string, mode: "record" | "replay", rrfile: string, disk: string, name: string): ChildProcess {
  const args = [
    "-nodefaults", "-no-user-config", "-machine", "pc-i440fx-7.2,accel=tcg", "-cpu", "max", "-smp", "1", "-m", "128M", "-display", "none",
    "-icount", `shift=auto,rr=${mode},rrfile=${rrfile}`, "-S",
    "-chardev", `socket,id=qmp,path=${join(dir, `qmp-${name}.sock`)},server=on,wait=off`, "-mon", "chardev=qmp,mode=control",
    "-chardev", `socket,id=serial0,path=${join(dir, `serial-${name}.sock`)},server=on,wait=off`, "-serial", "chardev:serial0",
    "-kernel", join(image, "vmlinuz"), "-initrd", join(image, "initrd.img"), "-append", "console=ttyS0 quiet panic=-1",
    "-blockdev", `driver=file,node-name=root-file,filename=${disk}`, "-blockdev", "driver=qcow2,node-name=root-q,file=root-file",
    "-blockdev", "driver=blkreplay,node-name=root,image=root-q", "-device", "virtio-blk-pci,id=root-dev,drive=root", "-net", "none",
  ];
  return spawn("nice", ["qemu-system-x86_64", ...args], { stdio: ["ignore", "ignore", "inherit"] });
}

const connect = (dir: string, name: string) => pollFor(() => QmpClient.connect(join(dir, `qmp-${name}.sock`), { commandTimeoutMs: 60_000 }), 20_000, `QMP of ${name}`);

async function ramSha256(qmp: QmpClient, file: string): Promise<string> {
  await qmp.execute("pmemsave", { val: 0, size: RAM, filename: file });
  const h = createHash("sha256");
  for await (const c of createReadStream(file)) h.update(c as Buffer);
  rmSync(file);
  return h.digest("hex");
}

async function stopAtBreak(qmp: QmpClient, timeoutMs: number): Promise<void> {
  await qmp.execute("replay-break", { icount: BREAK });
  const stopped = qmp.waitEvent("STOP", { timeoutMs });
  await qmp.execute("cont");
  await stopped;
  const r = await qmp.execute<{ icount: number }>("query-replay");
  assert.equal(r.icount, BREAK);
}

// Opt-in (VIGIL_RR_SHADOW_TEST=1) until its hang is understood: of three runs on the shared 2-core machine, one
// reached the break (17 s, 164 ms behind the copy), two stalled with the shadow's vCPU thread idle on a futex and
// no thread reading the FIFO (not starved of data: the recording was 2.5e9 instructions ahead).
const shadowTest = process.env.VIGIL_RR_SHADOW_TEST === "1" ? {} : { skip: "set VIGIL_RR_SHADOW_TEST=1 (a trailing replay can stall: see the comment above)" };

test("a shadow replay fed through a FIFO while the recording runs reaches the same RAM as a replay of the stored log", { timeout: 300_000, ...shadowTest }, async (t) => {
  const image = tinyDir();
  const dir = mkdtempSync(join(tmpdir(), "vigil-rrfollow-"));
  const procs: ChildProcess[] = [];
  t.after(() => {
    for (const p of procs) if (p.exitCode === null && p.signalCode === null) p.kill("SIGKILL");
    rmSync(dir, { recursive: true, force: true });
  });
  const base = join(dir, "base.qcow2");
  spawnSync("qemu-img", ["create", "-q", "-f", "qcow2", "-b", join(image, "disk.qcow2"), "-F", "qcow2", base], { stdio: "inherit" });
  for (const n of ["rec", "shadow", "ref"]) copyFileSync(base, join(dir, `${n}.qcow2`));
  const raw = join(dir, "log.bin");
  const fifo = join(dir, "shadow.fifo");

  const rec = qemu(dir, image, "record", raw, join(dir, "rec.qcow2"), "rec");
  procs.push(rec);
  const recQmp = await connect(dir, "rec");
  const follower = await LogFollower.start(raw, fifo, { pollMs: 20 });
  const compressor = LogCompressor.start(raw, join(dir, "log.zst"), { pollMs: 100, punchLimit: () => follower.rawOffset });
  t.after(async () => {
    await follower.close();
    await compressor.abort();
  });
  // The replay reads its first event while it starts, before its monitor exists: the recording must be running.
  await recQmp.execute("cont");
  const recStart = Date.now();
  const shadow = qemu(dir, image, "replay", fifo, join(dir, "shadow.qcow2"), "shadow");
  procs.push(shadow);
  const shadowQmp = await connect(dir, "shadow");
  const copiedAt = follower.whenCopied(BigInt(BREAK));
  await stopAtBreak(shadowQmp, 150_000);
  const shadowStopped = Date.now();
  const lagMs = shadowStopped - (await copiedAt);
  const shadowRam = await ramSha256(shadowQmp, join(dir, "mem-shadow.bin"));
  const recIcount = (await recQmp.execute<{ icount: number }>("query-replay")).icount;
  console.log(`shadow replay: break at ${BREAK} reached ${shadowStopped - recStart} ms after the recording started, ` +
    `${lagMs} ms after the log holding it was copied; the recording was at icount ${recIcount}; live log ${JSON.stringify(compressor.stats())}`);
  assert.ok(recIcount > BREAK);

  await recQmp.execute("quit").catch(() => undefined);
  await new Promise((r) => rec.once("close", r));
  const stored = await compressor.finish();
  await shadowQmp.execute("quit").catch(() => undefined);
  await new Promise((r) => shadow.once("close", r));
  await follower.done();

  const expanded = join(dir, "ref.bin");
  await expandLog(join(dir, "log.zst"), stored, expanded, "follow-test");
  const summary = await summarizeReplayLog(expanded);
  assert.equal(summary.endedCleanly, true);
  assert.ok(summary.totalInstructions >= BigInt(recIcount));

  const ref = qemu(dir, image, "replay", expanded, join(dir, "ref.qcow2"), "ref");
  procs.push(ref);
  const refQmp = await connect(dir, "ref");
  await stopAtBreak(refQmp, 240_000);
  assert.equal(await ramSha256(refQmp, join(dir, "mem-ref.bin")), shadowRam, "the shadow's RAM at the break equals the stored log's replay");
  await refQmp.execute("quit").catch(() => undefined);
});

test("a real recording is compressed while QEMU writes it and expands to a log that replays to the same RAM", { timeout: 300_000 }, async (t) => {
  const image = tinyDir();
  const dir = mkdtempSync(join(tmpdir(), "vigil-rrstore-"));
  const procs: ChildProcess[] = [];
  t.after(() => {
    for (const p of procs) if (p.exitCode === null && p.signalCode === null) p.kill("SIGKILL");
    rmSync(dir, { recursive: true, force: true });
  });
  const base = join(dir, "base.qcow2");
  spawnSync("qemu-img", ["create", "-q", "-f", "qcow2", "-b", join(image, "disk.qcow2"), "-F", "qcow2", base], { stdio: "inherit" });
  for (const n of ["rec", "ref"]) copyFileSync(base, join(dir, `${n}.qcow2`));
  const raw = join(dir, "log.bin");
  const rec = qemu(dir, image, "record", raw, join(dir, "rec.qcow2"), "rec");
  procs.push(rec);
  const recQmp = await connect(dir, "rec");
  const compressor = LogCompressor.start(raw, join(dir, "log.zst"), { pollMs: 100 });
  t.after(() => compressor.abort());
  await recQmp.execute("cont");
  await new Promise((r) => setTimeout(r, 5000));
  await recQmp.execute("stop");
  const live = compressor.stats();
  assert.ok(live.rawBytes > 0, "the compressor reads the log while QEMU records it");
  const icount = (await recQmp.execute<{ icount: number }>("query-replay")).icount;
  const recRam = await ramSha256(recQmp, join(dir, "mem-rec.bin"));
  await recQmp.execute("quit").catch(() => undefined);
  await new Promise((r) => rec.once("close", r));
  const stored = await compressor.finish();
  console.log(`recorded ${icount} instructions in 5 s: raw ${stored.rawBytes} bytes, stored ${stored.storedBytes} (live ${JSON.stringify(live)})`);
  assert.equal(stored.header.slice(0, 8), "00e0200c");

  const expanded = join(dir, "ref.bin");
  await expandLog(join(dir, "log.zst"), stored, expanded, "store-test");
  const summary = await summarizeReplayLog(expanded);
  assert.equal(summary.endedCleanly, true);
  assert.ok(summary.totalInstructions >= BigInt(icount));

  const ref = qemu(dir, image, "replay", expanded, join(dir, "ref.qcow2"), "ref");
  procs.push(ref);
  const refQmp = await connect(dir, "ref");
  await refQmp.execute("replay-break", { icount });
  const stopped = refQmp.waitEvent("STOP", { timeoutMs: 150_000 });
  await refQmp.execute("cont");
  await stopped;
  assert.equal((await refQmp.execute<{ icount: number }>("query-replay")).icount, icount);
  assert.equal(await ramSha256(refQmp, join(dir, "mem-ref.bin")), recRam, "the replay of the stored log has the recording's RAM");
  await refQmp.execute("quit").catch(() => undefined);
});
