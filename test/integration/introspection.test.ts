/**
 * The IDS with real guests and real tampering. The tiny guest boots under a vigil daemon, which baselines its
 * kernel once the guest agent answers; a watch sweeps it every second. The ATTACKER then works from the host:
 * it pauses the VM through the API, writes into the VM's RAM file through its own read-write descriptor
 * (src/introspection/testing — never the engine, which only ever opens guest RAM read-only), and resumes it.
 * Each attack must be reported within two sweeps of the resume, as an `ids.finding` audit record by `system`
 * with its evidence, and disappear once undone. The lie detector is shown with a process hidden from the
 * guest's own `ps` by a bind mount done inside the guest; containment with the pause and snapshot-and-pause
 * policies; and a daemon restart that resumes the watch against the same boot's baseline.
 */
import { test, type TestContext } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { BIN, requireTinyImage, startDaemon, waitFor, type DaemonHandle } from "../harness.ts";
import { detectAccelerator } from "../../src/qemu/accel.ts";
import { ConsoleShell, RamAttacker } from "../../src/introspection/testing/live-guest.ts";
import { lastSeq, until, waitClean, waitFinding, watchOf, whilePaused } from "../../src/introspection/testing/watch-api.ts";
import { locateModule, locateTask, moduleListHead, overwriteSyscall, patchKernel, redirectIdtGate, restoreListNode, taskListHead, unlinkModule, unlinkTask, writeVirtual } from "../../src/introspection/testing/attacker.ts";

const MEMORY_MIB = 256;

type Watch = { vm: string; status: string; sweeps: number; activeFindings: number; policy: string; intervalMs: number; baseline: { source: string; takenAt: string } | null; problem: string | null };
type FindingRecord = { seq: number; time: string; sweep: number | null; check: string; severity: string; message: string; evidence: Record<string, unknown> };
type AuditRecord = { seq: number; time: string; actor: string; action: string; result: string; target: { name: string | null }; details: Record<string, unknown> };
type Vm = { id: string; state: string; pid: number };

async function records(d: DaemonHandle, after: number, action?: string): Promise<AuditRecord[]> {
  const { records: r } = await d.api<{ records: AuditRecord[] }>("GET", `/v1/audit?after=${after}&limit=1000`);
  return action ? r.filter((x) => x.action === action) : r;
}

/** Boots `vm`, watches it every second (policy `policy`), and waits for its first sweeps. */
async function bootWatched(t: TestContext, d: DaemonHandle, vm: string, policy = "alert"): Promise<{ info: Vm; attacker: RamAttacker; shell: ConsoleShell }> {
  await d.api("POST", "/v1/vms", { name: vm, memoryMiB: MEMORY_MIB, vcpus: 1 });
  const info = await d.api<Vm>("POST", `/v1/vms/${vm}/start`, { wait: true });
  const w = await d.api<Watch>("PUT", `/v1/vms/${vm}/watch`, { intervalMs: 1000, policy });
  assert.equal(w.policy, policy);
  await until(`${vm} watched`, 60_000, async () => {
    const x = await watchOf(d, vm);
    return x.status === "watching" && x.sweeps >= 2 ? x : undefined;
  });
  const attacker = RamAttacker.open(info.pid, MEMORY_MIB, detectAccelerator().accel);
  t.after(() => attacker.close());
  const shell = await ConsoleShell.open(vm, d.target);
  t.after(() => shell.close());
  return { info, attacker, shell };
}

interface Detection {
  scenario: string;
  check: string;
  sweepsAfterResume: number;
  finding: FindingRecord;
}

/**
 * One attack: written with the VM paused, then resumed. Returns the finding and after how many sweeps it came
 * (sweeps do not run while the guest is paused); the attack is undone and the watch must come back clean.
 */
async function attack(d: DaemonHandle, vm: string, scenario: string, check: string, write: () => () => void): Promise<Detection> {
  const after = await lastSeq(d);
  let undo!: () => void;
  let s0 = 0;
  await whilePaused(d, vm, async () => {
    undo = write();
    s0 = (await watchOf(d, vm)).sweeps;
  });
  const finding = await waitFinding(d, vm, check, after);
  assert.ok(finding.sweep !== null && finding.sweep > s0 && finding.sweep <= s0 + 2, `${scenario}: reported in sweep ${finding.sweep}, the attack was in place from sweep ${s0 + 1}`);
  await whilePaused(d, vm, () => undo());
  await waitClean(d, vm);
  return { scenario, check, sweepsAfterResume: (finding.sweep ?? 0) - s0, finding };
}

test("host-side tampering of the guest kernel is reported within two sweeps, with evidence", { timeout: 600_000 }, async (t) => {
  requireTinyImage();
  const d = await startDaemon(t);
  const vm = "victim";
  const { attacker: a, shell } = await bootWatched(t, d, vm);
  const t0 = await lastSeq(d);

  // The one-off report: kernel identity, the VMI process view agreeing with the guest's ps, no findings.
  const report = JSON.parse(d.cli("introspect", vm, "--json").stdout) as { findings: Array<{ severity: string }>; processes: Array<{ pid: number; tgid: number; inGuestView?: boolean; sources: string[] }>; modules: Array<{ name: string }>; kernel: { release: string; buildId: string; kaslrShift: string }; durationMs: number };
  assert.deepEqual(report.findings.filter((f) => f.severity !== "info"), []);
  assert.match(report.kernel.release, /cloud-amd64/);
  assert.match(report.kernel.buildId, /^[0-9a-f]{40}$/);
  assert.match(report.kernel.kaslrShift, /^0x[0-9a-f]+$/);
  assert.ok(report.processes.some((p) => p.pid === 1 && p.inGuestView === true && p.sources.includes("tasks")));
  assert.ok(report.modules.some((m) => m.name === "button"));
  assert.ok(report.durationMs > 0);

  // `vigil watch VM` follows the findings live from the events stream until interrupted.
  const follower = spawn(process.execPath, [BIN, "watch", vm], { env: d.env, stdio: ["ignore", "pipe", "pipe"] });
  t.after(() => follower.kill("SIGKILL"));
  let followed = "";
  follower.stdout.on("data", (b: Buffer) => (followed += b.toString()));
  let followErr = "";
  follower.stderr.on("data", (b: Buffer) => (followErr += b.toString()));
  await waitFor(() => followErr.includes("Findings follow"), 20_000, "vigil watch to attach");

  const detections: Detection[] = [];
  // 1. A system call table entry (kill → getpid's handler).
  const sc = await attack(d, vm, "sys_call_table[62] overwritten", "syscall-table", () => {
    const old = overwriteSyscall(a.model, a.writer, 62, a.sym("__x64_sys_getpid"));
    return () => void overwriteSyscall(a.model, a.writer, 62, old);
  });
  detections.push(sc);
  for (const k of ["address", "symbol", "expected", "found"]) assert.ok(sc.finding.evidence[k], `syscall-table evidence has ${k}`);
  assert.equal(sc.finding.evidence.found, "0x" + a.sym("__x64_sys_getpid").toString(16));
  await waitFor(() => /CRITICAL\s+syscall-table/.test(followed), 10_000, "the follower to print the finding");
  follower.kill("SIGINT");

  // 2. One byte of the dispatch switch (64 bytes into x64_sys_call, not a patch site).
  detections.push(
    await attack(d, vm, "a byte of x64_sys_call changed", "syscall-text", () => {
      const at = a.sym("x64_sys_call") + 0x40n;
      const old = patchKernel(a.model, a.writer, at, Buffer.from([0xcc]));
      assert.notEqual(old[0], 0xcc);
      return () => void patchKernel(a.model, a.writer, at, old);
    }),
  );
  // 3. An IDT gate: vector 0x80 → another handler.
  const idt = await attack(d, vm, "IDT vector 0x80 redirected", "idt-gate", () => {
    const old = redirectIdtGate(a.model, a.writer, 0x80, a.sym("asm_exc_int3"));
    return () => writeVirtual(a.model, a.writer, a.sym("idt_table") + 0x80n * 16n, old);
  });
  detections.push(idt);
  assert.equal(idt.finding.evidence.vector, 0x80);
  assert.equal(idt.finding.evidence.found, "0x" + a.sym("asm_exc_int3").toString(16));

  // 4. DKOM: a running process unlinked from the kernel's task list (it keeps running).
  const pid = await shell.spawn("sleep 100000");
  await new Promise((r) => setTimeout(r, 2500)); // in the watch's view for a sweep or two first
  const dkom = await attack(d, vm, "a running process unlinked from tasks", "hidden-process", () => {
    const task = locateTask(a.model, pid);
    assert.ok(task, `pid ${pid} in the PID table`);
    const u = unlinkTask(a.model, a.writer, task);
    return () => restoreListNode(a.model, a.writer, u, taskListHead(a.model));
  });
  detections.push(dkom);
  assert.equal(dkom.finding.evidence.pid, pid);

  // 5. A module unlinked from `modules` (it stays in sysfs).
  const mod = await attack(d, vm, "module button unlinked from modules", "hidden-module", () => {
    const m = locateModule(a.model, "button");
    assert.ok(m, "module button is loaded");
    const u = unlinkModule(a.model, a.writer, m);
    return () => restoreListNode(a.model, a.writer, u, moduleListHead(a.model));
  });
  detections.push(mod);
  assert.equal(mod.finding.evidence.module, "button");

  // 6. The guest's own tools lie: `mount --bind` of an empty directory (/root) over /proc/PID, through the
  // agent's allow-listed `mount` (every argv character is in its allowed set), hides the process from the
  // guest's ps; VMI still sees it run.
  {
    const after = await lastSeq(d);
    const m = await d.api<{ exitCode: number; stderr: string }>("POST", `/v1/vms/${vm}/guest/exec`, { argv: ["mount", "--bind", "/root", `/proc/${pid}`] });
    assert.equal(m.exitCode, 0, Buffer.from(m.stderr, "base64").toString());
    const s0 = (await watchOf(d, vm)).sweeps;
    const ps = await d.api<{ processes: Array<{ pid: number }> }>("GET", `/v1/vms/${vm}/guest/ps`);
    assert.equal(ps.processes.some((p) => p.pid === pid), false, "the guest's ps no longer lists it");
    const f = await waitFinding(d, vm, "process-hidden-from-guest", after);
    assert.equal(f.evidence.pid, pid);
    assert.ok(f.sweep !== null && f.sweep <= s0 + 2, `reported in sweep ${f.sweep}, hidden from sweep ${s0 + 1}`);
    detections.push({ scenario: "bind mount over /proc/PID (lie detector)", check: f.check, sweepsAfterResume: (f.sweep ?? 0) - s0, finding: f });
    await shell.run(`umount /proc/${pid}; kill ${pid}`);
    await waitClean(d, vm);
  }

  // Every new finding is one audit record by system, with its evidence; nothing else alarmed on the way.
  const found = await records(d, t0, "ids.finding");
  assert.ok(found.every((r) => r.actor === "system" && r.target.name === vm && typeof r.details.evidence === "object"));
  const unexpected = found.filter((r) => !["syscall-table", "kernel-rodata", "syscall-text", "kernel-text", "idt-gate", "hidden-process", "hidden-module", "process-hidden-from-guest"].includes(String(r.details.check)));
  assert.deepEqual(unexpected.map((r) => r.details.message), []);
  for (const x of detections) t.diagnostic(`${x.scenario}: ${x.check} in sweep +${x.sweepsAfterResume}`);
  const findings = JSON.parse(d.cli("findings", vm, "--json").stdout) as { watch: Watch; active: unknown[]; recent: FindingRecord[] };
  assert.equal(findings.watch.status, "watching");
  assert.deepEqual(findings.active, []);
  assert.ok(findings.recent.length >= detections.length);
});

test("containment: the pause policy pauses within one interval; snapshot-and-pause keeps a memory snapshot", { timeout: 600_000 }, async (t) => {
  requireTinyImage();
  const d = await startDaemon(t);
  const vm = "contained";
  const { attacker: a } = await bootWatched(t, d, vm, "pause");

  const after = await lastSeq(d);
  let old = 0n;
  await whilePaused(d, vm, () => void (old = overwriteSyscall(a.model, a.writer, 62, a.sym("__x64_sys_getpid"))));
  const f = await waitFinding(d, vm, "syscall-table", after);
  const policy = await until("the policy action", 10_000, async () => (await records(d, after, "ids.policy"))[0]);
  assert.equal(policy.result, "ok");
  assert.equal(policy.actor, "system");
  assert.equal(policy.details.paused, true);
  assert.ok(Date.parse(policy.time) - Date.parse(f.time) < 1000, `paused ${Date.parse(policy.time) - Date.parse(f.time)} ms after the finding`);
  assert.equal((await d.api<Vm>("GET", `/v1/vms/${vm}`)).state, "paused");
  assert.ok((await records(d, after, "vm.pause")).some((r) => r.actor === "system"), "the pause itself is audited as system's");
  // Undo while it is paused; after the resume the watch is clean, and containment is armed again.
  overwriteSyscall(a.model, a.writer, 62, old);
  await d.api("POST", `/v1/vms/${vm}/resume`);
  await waitClean(d, vm);

  assert.equal((await d.api<Watch>("PUT", `/v1/vms/${vm}/watch`, { intervalMs: 1000, policy: "snapshot-and-pause" })).policy, "snapshot-and-pause");
  const after2 = await lastSeq(d);
  let gate!: Buffer;
  await whilePaused(d, vm, () => void (gate = redirectIdtGate(a.model, a.writer, 0x80, a.sym("asm_exc_int3"))));
  await waitFinding(d, vm, "idt-gate", after2);
  const p2 = await until("the snapshot-and-pause action", 60_000, async () => (await records(d, after2, "ids.policy"))[0]);
  assert.equal(p2.result, "ok", JSON.stringify(p2.details));
  assert.equal(p2.details.paused, true);
  const snap = String(p2.details.snapshot);
  const { snapshots } = await d.api<{ snapshots: Array<{ name: string; kind: string; createdBy: string }> }>("GET", `/v1/vms/${vm}/snapshots`);
  assert.deepEqual(
    snapshots.filter((s) => s.name === snap).map((s) => [s.kind, s.createdBy]),
    [["memory", "system"]],
  );
  assert.equal((await d.api<Vm>("GET", `/v1/vms/${vm}`)).state, "paused", "still paused after the snapshot");
  writeVirtual(a.model, a.writer, a.sym("idt_table") + 0x80n * 16n, gate);
  await d.api("POST", `/v1/vms/${vm}/resume`);
  await waitClean(d, vm);

  // Reverting to the evidence does not whitelist it: the resumed state is checked against the baseline of the
  // boot it was saved in, and the redirected gate is reported again.
  await d.api("PUT", `/v1/vms/${vm}/watch`, { intervalMs: 1000, policy: "alert" });
  const after3 = await lastSeq(d);
  await d.api("POST", `/v1/vms/${vm}/snapshots/${snap}/revert`, {});
  const rebased = await until("the restored baseline", 90_000, async () => (await records(d, after3, "ids.baseline"))[0]);
  assert.equal(rebased.details.source, "restored");
  assert.equal(rebased.details.state, snap);
  await waitFinding(d, vm, "idt-gate", after3, 30_000);
  assert.deepEqual((await records(d, after3, "ids.finding")).filter((r) => r.details.check === "baseline-untrusted"), []);
});

test("a daemon restart resumes the watch against the same boot's baseline; a guest reboot is a new baseline", { timeout: 600_000 }, async (t) => {
  requireTinyImage();
  const d = await startDaemon(t);
  const vm = "steady";
  const { attacker: a, shell } = await bootWatched(t, d, vm);
  const before = await watchOf(d, vm);
  assert.equal(before.baseline?.source, "start");

  // The daemon dies; while nobody watches, a rootkit goes in (a single aligned 8-byte store, no pause needed).
  const after = await lastSeq(d);
  await d.kill9();
  const old = overwriteSyscall(a.model, a.writer, 62, a.sym("__x64_sys_getpid"));
  await d.restart();
  const w = await until("the watch to resume", 30_000, async () => {
    const x = await watchOf(d, vm);
    return x.status === "watching" ? x : undefined;
  });
  assert.equal(w.baseline?.source, "stored", "the baseline of this boot, not a new one taken after the change");
  assert.equal(w.baseline?.takenAt, before.baseline?.takenAt);
  const f = await waitFinding(d, vm, "syscall-table", after);
  assert.ok((f.sweep ?? 99) <= 2, `found in sweep ${f.sweep} after the restart`);
  await whilePaused(d, vm, () => void overwriteSyscall(a.model, a.writer, 62, old));
  await waitClean(d, vm);
  const list = d.cli("watch", "--list");
  assert.match(list.stdout, /steady\s+watching\s+1s\s+alert/);

  // The guest reboots inside the same QEMU: a new boot (new KASLR), a new baseline, and the reset is audited.
  // (The console opened before the restart went with the old daemon: open it again.)
  shell.close();
  const console2 = await ConsoleShell.open(vm, d.target);
  t.after(() => console2.close());
  const seq = await lastSeq(d);
  void console2.run("reboot", 1000).catch(() => undefined);
  const reset = await until("the reset record", 60_000, async () => (await records(d, seq, "ids.guest-reset"))[0]);
  assert.equal(reset.actor, "system");
  const rebased = await until("a new baseline", 120_000, async () => {
    const x = await watchOf(d, vm);
    return x.status === "watching" && x.baseline?.source === "reset" && x.sweeps >= 3 ? x : undefined;
  });
  assert.notEqual(rebased.baseline?.takenAt, before.baseline?.takenAt);
  const { active } = await d.api<{ active: unknown[] }>("GET", `/v1/vms/${vm}/findings?limit=1`);
  assert.deepEqual(active, [], "the rebooted kernel is not compared with the old boot's baseline");
  assert.deepEqual((await records(d, seq, "ids.finding")).map((r) => r.details.message), []);
});
