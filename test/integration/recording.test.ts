/**
 * Record/replay with real QEMU (docs/recording.md): a recorded tiny guest reads /dev/urandom and answers input typed
 * on its console during the recording; the replay reproduces its serial output byte for byte and its RAM digest at
 * the end point; a changed log is refused; what QEMU cannot record is refused up front with the reason.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync, writeFileSync } from "node:fs";
import { upgrade } from "../../src/cli/client.ts";
import { guestExec, pollFor, requireTinyImage, startDaemon, waitFor } from "../harness.ts";

type Rec = { name: string; state: string; instructions: number | null; storedBytes: number; rawBytes: number; logKbps: number; durationMs: number; error: string | null };
type Shown = Rec & { files: string[]; log: { file: string; sha256: string }; endReason: string };

test("a recording replays to the same serial output and RAM; a changed log is refused; unrecordable specs are refused", { timeout: 900_000 }, async (t) => {
  requireTinyImage();
  const d = await startDaemon(t);
  t.after(() => void (process.env.VIGIL_TEST_LOG && writeFileSync(process.env.VIGIL_TEST_LOG, d.log())));

  // Refused up front, nothing made: two vCPUs.
  await d.api("POST", "/v1/vms", { name: "wide", memoryMiB: 128, vcpus: 2 });
  const wide = d.cli("vm", "start", "wide", "--record");
  assert.notEqual(wide.status, 0);
  assert.match(wide.stderr, /2 vCPUs; QEMU records and replays exactly one/);
  assert.deepEqual((await d.api<{ recordings: unknown[] }>("GET", "/v1/recordings")).recordings, []);

  await d.api("POST", "/v1/vms", { name: "rr", memoryMiB: 128 });
  const started = d.cli("vm", "start", "rr", "--record", "--json");
  assert.equal(started.status, 0, started.stderr);
  const recName = (JSON.parse(started.stdout) as { recording: { name: string } }).recording.name;
  assert.equal(recName, "rr-1");

  // Type on the console (through the recorder's relay) once the shell is there.
  const socket = await upgrade("/v1/vms/rr/console", d.target);
  t.after(() => socket.destroy());
  socket.on("error", () => undefined); // the console closes with the VM
  let seen = "";
  socket.on("data", (b: Buffer) => (seen += b.toString()));
  await waitFor(() => seen.includes("vigil-init: ready"), 240_000, "the recorded guest to boot");
  const marker = `typed-${process.pid}`;
  // Typed once (the relay paces it into the UART); again only if the shell has not answered in 20 s.
  let sentAt = 0;
  await waitFor(() => {
    if (Date.now() - sentAt > 20_000) {
      sentAt = Date.now();
      socket.write(`head -c 32 /dev/urandom | od -An -tx1; echo ${marker}-$((40+2))\n`);
    }
    // The answer is computed by the shell, so the echo of the typed line does not count.
    return seen.includes(`${marker}-42`);
  }, 120_000, "the guest to answer typed input");
  const random = /((?:[0-9a-f]{2} ){15}[0-9a-f]{2})/.exec(seen.slice(seen.lastIndexOf("od -An -tx1;")))?.[1];
  assert.ok(random, `urandom bytes on the console: ${seen.slice(-300)}`);

  // Stopping takes the end point first (paused, before the power button, which QEMU does not record), then the
  // guest powers off as usual.
  socket.destroy();
  const stop = d.cli("vm", "stop", "rr", "--timeout", "120");
  assert.equal(stop.status, 0, stop.stderr);
  const rec = await pollFor(async () => {
    const r = await d.api<Shown>("GET", `/v1/recordings/${recName}`).catch(() => undefined);
    return r && r.state !== "recording" ? r : undefined;
  }, 120_000, "the recording to finish");
  assert.equal(rec.endReason, "vigil vm stop");
  assert.equal(rec.state, "complete", rec.error ?? "");
  assert.ok(rec.instructions! > 1e8, `instructions: ${rec.instructions}`);
  assert.ok(rec.storedBytes > 0 && rec.storedBytes < rec.rawBytes, `compressed ${rec.storedBytes} of ${rec.rawBytes}`);
  const list = JSON.parse(d.cli("recording", "list", "--json").stdout) as { recordings: Rec[] };
  assert.deepEqual(list.recordings.map((r) => r.name), [recName]);

  // The replay is the same execution: the typed command's output (the random bytes) comes out again.
  const replay = d.cli("recording", "replay", recName, "--json");
  assert.equal(replay.status, 0, replay.stderr + replay.stdout);
  const r = JSON.parse(replay.stdout) as { verified: { serial: boolean; memory: boolean; deterministic: boolean }; serialTail: string; speed: number; reachedIcount: number };
  assert.deepEqual(r.verified, { serial: true, memory: true, deterministic: true });
  assert.ok(r.serialTail.includes(random), "the replayed serial output has the same random bytes");
  assert.equal(r.reachedIcount, rec.instructions);

  // Halfway: a point inside the recording, no verification there.
  const half = JSON.parse(d.cli("recording", "seek", recName, "50%", "--json").stdout) as { reachedIcount: number; verified: unknown };
  assert.equal(half.verified, null);
  assert.ok(Math.abs(half.reachedIcount - rec.instructions! / 2) <= 1, `seek 50%: ${half.reachedIcount}`);

  // One changed byte in the stored log: refused before any replay.
  const logFile = rec.log.file;
  const bytes = readFileSync(logFile);
  bytes[Math.floor(bytes.length / 2)]! ^= 0x01;
  writeFileSync(logFile, bytes);
  const tampered = d.cli("recording", "replay", recName);
  assert.notEqual(tampered.status, 0);
  assert.match(tampered.stderr, /Cannot replay "rr-1": the recording.s log was changed/);

  // Export needs the log intact; delete removes the files and the row.
  const del = d.cli("recording", "delete", recName);
  assert.equal(del.status, 0, del.stderr);
  // Through the CLI, not d.api: the spawnSync calls above block this process for minutes, so its pooled keep-alive
  // socket, closed by the daemon meanwhile, would be reused (EPIPE).
  assert.deepEqual((JSON.parse(d.cli("recording", "list", "--json").stdout) as { recordings: unknown[] }).recordings, []);
});

test("bisect finds the instruction window in which the guest wrote its syscall table during the recording", { timeout: 1_200_000 }, async (t) => {
  requireTinyImage();
  const d = await startDaemon(t);
  t.after(() => void (process.env.VIGIL_TEST_LOG && writeFileSync(process.env.VIGIL_TEST_LOG, d.log())));
  await d.api("POST", "/v1/vms", { name: "rk", memoryMiB: 128 });
  // --wait: the agent answers over the second UART (a recording has no virtio-serial).
  const started = d.cli("vm", "start", "rk", "--record", "--wait", "--timeout", "300", "--json");
  assert.equal(started.status, 0, started.stderr);
  const recName = (JSON.parse(started.stdout) as { recording: { name: string } }).recording.name;
  const live = async () => (await d.api<{ live: { icount: number } }>("GET", `/v1/recordings/${recName}`)).live.icount;
  // Let the kernel settle so the write lands well after the baseline.
  await new Promise((r) => setTimeout(r, 8000));
  const before = await live();
  const w = await guestExec(d, "rk", ["/usr/lib/vigil/bin/sct-write", "62", "__x64_sys_getpid"]);
  assert.equal(w.exitCode, 0, w.err + w.out);
  const after = await live();
  await new Promise((r) => setTimeout(r, 4000));
  assert.equal(d.cli("vm", "stop", "rk", "--timeout", "120").status, 0);
  const rec = await pollFor(async () => {
    const r = await d.api<{ state: string; instructions: number; error: string | null }>("GET", `/v1/recordings/${recName}`).catch(() => undefined);
    return r && r.state !== "recording" ? r : undefined;
  }, 60_000, "the recording to finish");
  assert.equal(rec.state, "complete", rec.error ?? "");
  t.diagnostic(`recorded ${rec.instructions} instructions; the exec ran in ${before}-${after}`);

  const b = d.cli("recording", "bisect", recName, "--check", "syscall-table", "--probes", "10", "--json");
  assert.equal(b.status, 0, b.stderr + b.stdout);
  const r = JSON.parse(b.stdout) as { found: boolean; window: { from: number; to: number }; finding: { evidence: { syscall?: { number: number; name: string } } }; replays: number; baselineAt: number };
  assert.equal(r.found, true, b.stdout);
  assert.deepEqual(r.finding.evidence.syscall, { number: 62, name: "kill" });
  // The window holds the write: it ends after the exec began and starts before it returned, and it is narrow
  // (two passes of 10 probes: about a hundredth of the recording).
  assert.ok(r.window.to >= before && r.window.from <= after, `window ${r.window.from}-${r.window.to}, the exec ran in ${before}-${after}`);
  assert.ok(r.window.to - r.window.from <= rec.instructions / 50, `window of ${r.window.to - r.window.from} of ${rec.instructions}`);
  assert.ok(r.baselineAt < r.window.from);
  assert.equal(r.replays, 2);

  // A check that never fires is reported as such.
  const none = JSON.parse(d.cli("recording", "bisect", recName, "--check", "idt-base", "--probes", "4", "--json").stdout) as { found: boolean };
  assert.equal(none.found, false);
});

test("a shadow trails the recording, finds the syscall-table write while the VM still records, and the output gate shuts", { timeout: 900_000 }, async (t) => {
  requireTinyImage();
  const d = await startDaemon(t);
  t.after(() => void (process.env.VIGIL_TEST_LOG && writeFileSync(process.env.VIGIL_TEST_LOG, d.log())));
  await d.api("POST", "/v1/vms", { name: "sh", memoryMiB: 128 });
  const started = d.cli("vm", "start", "sh", "--record", "--shadow", "--gate-output", "--wait", "--timeout", "300", "--json");
  assert.equal(started.status, 0, started.stderr);
  const recName = (JSON.parse(started.stdout) as { recording: { name: string } }).recording.name;
  type ShadowShown = { shadow: { state: string; checkedIcount: number; baselineAt: number | null; sweeps: number; lagMs: number | null; lagMedianMs: number | null; findings: { check: string; icount: number }[]; error: string | null } | null; live: { icount: number; gate: { shut: string | null; heldBytes: number } | null } | null };
  const show = () => JSON.parse(d.cli("recording", "show", recName, "--json").stdout) as ShadowShown;
  // The shadow has modelled the guest's kernel and swept it at least once.
  // (pollFor retries through exceptions: a failed shadow is returned, then asserted.)
  const ready = await pollFor(async () => {
    const s = show().shadow;
    return s && (s.state === "failed" || (s.baselineAt !== null && s.sweeps > 0)) ? s : undefined;
  }, 300_000, "the shadow to baseline the guest and sweep it");
  assert.notEqual(ready.state, "failed", ready.error ?? "");
  assert.deepEqual(ready.findings, [], "nothing reported before the write (the baseline waited for the booted kernel)");
  const before = show().live!.icount;
  const w = await guestExec(d, "sh", ["/usr/lib/vigil/bin/sct-write", "62", "__x64_sys_getpid"]);
  assert.equal(w.exitCode, 0, w.err + w.out);
  const wroteAt = Date.now();
  const found = await pollFor(async () => {
    const s = show();
    return s.shadow?.state === "failed" || s.shadow?.findings.find((f) => f.check === "syscall-table") ? s : undefined;
  }, 300_000, "the shadow to find the syscall-table write");
  assert.notEqual(found.shadow?.state, "failed", found.shadow?.error ?? "");
  const finding = found.shadow!.findings.find((f) => f.check === "syscall-table")!;
  t.diagnostic(`shadow: found at instruction ${finding.icount} (write began at ${before}), ${Date.now() - wroteAt} ms after the exec returned; lag ${found.shadow!.lagMs} ms, median ${found.shadow!.lagMedianMs} ms over ${found.shadow!.sweeps} sweeps`);
  assert.ok(finding.icount >= before, `found at ${finding.icount}, the write began at ${before}`);
  assert.ok(found.shadow!.lagMedianMs !== null && found.shadow!.lagMedianMs < 120_000, `median lag ${found.shadow!.lagMedianMs} ms`);
  assert.match(found.live!.gate?.shut ?? "", /syscall-table/);
  // Audited like a live IDS finding, with the recording and the instruction count.
  const records = (await d.api<{ records: { action: string; actor: string; details: { check?: string; shadow?: { recording: string; icount: number } } }[] }>("GET", "/v1/audit?limit=10000")).records;
  const audited = records.find((r) => r.action === "ids.finding" && r.details.check === "syscall-table" && r.details.shadow?.recording === recName);
  assert.ok(audited, "an ids.finding audit record names the recording");
  assert.equal(audited.actor, "system");

  assert.equal(d.cli("vm", "stop", "sh", "--timeout", "120").status, 0);
  const done = await pollFor(async () => {
    const s = JSON.parse(d.cli("recording", "show", recName, "--json").stdout) as ShadowShown & { state: string };
    return s.state !== "recording" ? s : undefined;
  }, 120_000, "the recording to finish");
  assert.equal(done.state, "complete");
  assert.equal(done.shadow?.state, "ended", "the shadow's last status is kept with the recording");
});
