/**
 * The IDS's judgement on a real guest (issue 10 §4): an ftrace call site rewritten to call another kernel
 * function is a kernel-text finding, while the kernel's own function tracer (its ops trampoline) is not; a
 * syscall table entry pointed into a module names the system call and the module; a module loaded again after
 * the baseline is a high finding under the watch's "no new modules" policy; and `vigil findings` shows the
 * alarms as active, then cleared, with their history. The attacker writes guest RAM from the host with the VM
 * paused (src/introspection/testing), as test/integration/introspection.test.ts does.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { requireTinyImage, startDaemon } from "../harness.ts";
import { detectAccelerator } from "../../src/qemu/accel.ts";
import { ConsoleShell, RamAttacker } from "../../src/introspection/testing/live-guest.ts";
import { locateModule, overwriteSyscall, patchKernel } from "../../src/introspection/testing/attacker.ts";
import { moduleRegions } from "../../src/introspection/attribution.ts";
import { kernelLayout } from "../../src/introspection/kernel-layout.ts";
import { readModuleLoadId } from "../../src/introspection/modules.ts";
import { lastSeq, until, waitClean, waitFinding, watchOf, whilePaused } from "../../src/introspection/testing/watch-api.ts";

const MEMORY_MIB = 256;
type Finding = { check: string; severity: string; message: string; evidence: Record<string, unknown> };
type FindingRecord = Finding & { seq: number; sweep: number | null };
type Alarm = { state: string; finding: Finding; history: Array<{ change: string; severity: string }> };

const call = (at: bigint, to: bigint): Buffer => {
  const b = Buffer.alloc(5);
  b[0] = 0xe8;
  b.writeInt32LE(Number(to - (at + 5n)), 1);
  return b;
};

test("ftrace sites, syscall attribution, no-new-modules and alarm history on a real guest", { timeout: 900_000 }, async (t) => {
  requireTinyImage();
  const d = await startDaemon(t);
  const vm = "ids";
  await d.api("POST", "/v1/vms", { name: vm, memoryMiB: MEMORY_MIB, vcpus: 1 });
  const info = await d.api<{ pid: number }>("POST", `/v1/vms/${vm}/start`, { wait: true });
  await d.api("PUT", `/v1/vms/${vm}/watch`, { intervalMs: 1000 });
  await until("the watch", 120_000, async () => {
    const w = await watchOf(d, vm);
    return w.status === "watching" && w.sweeps >= 2 ? w : undefined;
  });
  const a = RamAttacker.open(info.pid, MEMORY_MIB, detectAccelerator().accel);
  t.after(() => a.close());
  const shell = await ConsoleShell.open(vm, d.target);
  t.after(() => shell.close());
  const release = (await shell.run("uname -r")).split(/\r?\n/).map((l) => l.trim()).find((l) => /cloud-amd64$/.test(l));
  assert.ok(release);

  // 1. The kernel's own function tracer on one function (its ops gets a trampoline): explained, no finding.
  const tracing = "/sys/kernel/tracing";
  await shell.run(`mount -t tracefs nodev ${tracing}; echo __x64_sys_kill > ${tracing}/set_ftrace_filter; echo function > ${tracing}/current_tracer`);
  const s0 = (await watchOf(d, vm)).sweeps;
  await until("three sweeps with the tracer on", 30_000, async () => ((await watchOf(d, vm)).sweeps >= s0 + 3 ? true : undefined));
  assert.equal((await watchOf(d, vm)).activeFindings, 0, "the function tracer's own patching is not a finding");
  const traced = a.model.kernel.read(a.sym("__x64_sys_kill") + 4n, 5);
  t.diagnostic(`__x64_sys_kill+4 with the tracer on: ${traced?.toString("hex")}`);
  await shell.run(`echo nop > ${tracing}/current_tracer; echo > ${tracing}/set_ftrace_filter`);

  // 2. The same site made to call another kernel function: a kernel-text finding naming the callee.
  let after = await lastSeq(d);
  const site = a.sym("__x64_sys_kill") + 4n;
  const old = whilePaused(d, vm, () => patchKernel(a.model, a.writer, site, call(site, a.sym("__x64_sys_getpid"))));
  const orig = await old;
  assert.equal(orig.toString("hex"), "0f1f440000", "the ftrace site of __x64_sys_kill holds the 5-byte NOP");
  const ft = await waitFinding(d, vm, "kernel-text", after, 30_000);
  assert.match(ft.message, /the ftrace site at __x64_sys_kill\+0x4 now branches to kernel text __(x64|do)_sys_getpid/);
  await whilePaused(d, vm, () => patchKernel(a.model, a.writer, site, orig));
  await waitClean(d, vm, 30_000);

  // 3. sys_call_table[62] (kill) pointed into module button's code: the system call and the module are named.
  const button = locateModule(a.model, "button");
  assert.ok(button);
  const text = moduleRegions(a.model, kernelLayout(a.model), [button], [])[0];
  assert.ok(text, "button's memory regions");
  after = await lastSeq(d);
  const was = await whilePaused(d, vm, () => overwriteSyscall(a.model, a.writer, 62, text.start + 0x10n));
  const sc = await waitFinding(d, vm, "syscall-table", after, 30_000);
  assert.match(sc.message, /^System call 62 \(kill\): .*module "button"/);
  assert.deepEqual(sc.evidence.syscall, { number: 62, name: "kill" });
  assert.equal((sc.evidence.attribution as { module: string }).module, "button");
  await whilePaused(d, vm, () => overwriteSyscall(a.model, a.writer, 62, was));
  await waitClean(d, vm, 30_000);

  // 4. No new modules: button unloaded and loaded again is a high module-loaded finding (a signed module: no
  // module-untrusted); the CLI keeps the policy when the interval changes.
  d.cli("watch", vm, "--no-new-modules", "--no-follow");
  d.cli("watch", vm, "--interval", "1s", "--no-follow");
  assert.equal((await watchOf(d, vm)).noNewModules, true);
  after = await lastSeq(d);
  // The allocator may well put the new load at the old address: the kernfs id of /sys/module/button tells them apart.
  const loadId = (): bigint | undefined => {
    a.model.kernel.clearCache();
    a.model.kernel.physical.clearCache();
    const m = locateModule(a.model, "button");
    return m ? readModuleLoadId(a.model.kernel, kernelLayout(a.model).moduleMemory, m.address, a.model.pagingLevels) : undefined;
  };
  const id0 = loadId();
  assert.ok(id0 !== undefined, "button's kernfs id is readable");
  await shell.run(`rmmod button; insmod /lib/modules/${release}/button.ko`);
  assert.notEqual(loadId(), id0, "a new load has a new kernfs id");
  const ml = await waitFinding(d, vm, "module-loaded", after, 30_000);
  assert.equal(ml.severity, "high");
  assert.equal(ml.evidence.module, "button");
  const recent = (await d.api<{ recent: FindingRecord[] }>("GET", `/v1/vms/${vm}/findings?limit=100`)).recent.filter((f) => f.seq > after);
  assert.deepEqual(recent.filter((f) => f.check === "module-untrusted"), [], "a signed in-tree module is not untrusted");
  d.cli("watch", vm, "--new-modules", "--no-follow");
  await waitClean(d, vm, 30_000);

  // 5. vigil findings: the alarms are listed as cleared, with their history.
  const out = JSON.parse(d.cli("findings", vm, "--json").stdout) as { alarms: Alarm[]; active: unknown[] };
  assert.deepEqual(out.active, []);
  const byCheck = (c: string) => out.alarms.find((x) => x.finding.check === c);
  for (const c of ["kernel-text", "syscall-table", "module-loaded"]) {
    assert.equal(byCheck(c)?.state, "cleared", c);
    assert.deepEqual(byCheck(c)?.history.map((h) => h.change).slice(-1), ["cleared"], c);
  }
  const human = d.cli("findings", vm).stdout;
  assert.match(human, /CLEARED ALARMS/);
  // The audit log has each clearing too, as an ids.finding-change record by system.
  type Change = { actor: string; action: string; details: { change: string; check: string } };
  const clearings = await until("the clearings in the audit log", 10_000, async () => {
    const r = (await d.api<{ records: Change[] }>("GET", "/v1/audit?after=0&limit=1000")).records.filter((x) => x.action === "ids.finding-change" && x.actor === "system" && x.details.change === "cleared");
    return ["kernel-text", "syscall-table", "module-loaded"].every((c) => r.some((x) => x.details.check === c)) ? r : undefined;
  });
  assert.ok(clearings.length >= 3);
});
