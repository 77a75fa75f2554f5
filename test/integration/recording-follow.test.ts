/**
 * A shadow replay trailing a live recording, with real QEMUs (tiny guest, TCG): the recording's raw log is tailed
 * by a LogCompressor (into log.zst) and by a LogFollower (into the log file a second QEMU replays, kept on a leash
 * behind what is copied). The shadow stops at a replay-break both runs pass; its RAM must equal that of a third
 * QEMU replaying the finished, stored and expanded log to the same icount.
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
const LEASH_MARGIN = 10_000_000;

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

test("a shadow replay fed from the live log, on a leash, reaches the same RAM as a replay of the stored log", { timeout: 300_000 }, async (t) => {
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
  const shadowLog = join(dir, "shadow.log");

  const rec = qemu(dir, image, "record", raw, join(dir, "rec.qcow2"), "rec");
  procs.push(rec);
  const recQmp = await connect(dir, "rec");
  const follower = await LogFollower.start(raw, shadowLog, { pollMs: 20 });
  const compressor = LogCompressor.start(raw, join(dir, "log.zst"), { pollMs: 100, punchLimit: () => follower.rawOffset });
  t.after(async () => {
    await follower.close();
    await compressor.abort();
  });
  // The replay reads its first event while it starts, before its monitor exists: the recording must be running.
  await recQmp.execute("cont");
  const recStart = Date.now();
  // The replay reads its first events while it starts: they must be in its file.
  await follower.whenCopied(BigInt(2 * LEASH_MARGIN));
  const shadow = qemu(dir, image, "replay", shadowLog, join(dir, "shadow.qcow2"), "shadow");
  procs.push(shadow);
  const shadowQmp = await connect(dir, "shadow");
  const copiedAt = follower.whenCopied(BigInt(BREAK));
  // On a leash: the shadow never runs past what the follower has copied (less a margin): it never reads the end
  // of its file.
  for (let at = 0; at < BREAK; ) {
    const copied = Number(follower.stats().icount) - LEASH_MARGIN;
    if (copied <= at) {
      await new Promise((r) => setTimeout(r, 100));
      continue;
    }
    const target = Math.min(BREAK, copied);
    await shadowQmp.execute("replay-break", { icount: target });
    const stopped = shadowQmp.waitEvent("STOP", { timeoutMs: 150_000 });
    await shadowQmp.execute("cont");
    await stopped;
    at = (await shadowQmp.execute<{ icount: number }>("query-replay")).icount;
    assert.equal(at, target);
  }
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
