/**
 * No false alarms: a clean tiny guest, watched every second for VIGIL_SOAK_SECONDS (default 120; the issue asks
 * for 10 minutes, which is run by hand: `VIGIL_SOAK_SECONDS=600 node scripts/run-tests.mjs introspection-soak`)
 * under an ordinary workload — processes starting and exiting all the time, the guest agent's commands and ps,
 * files written to /data, a module unloaded and loaded again, a tracepoint and then the function tracer switched
 * on and off (the kernel patching its own text, legitimately) — must not produce a single finding. The guest's
 * allow-listed agent cannot write to tracefs or load modules, so those run on the serial console, as an
 * administrator would run them.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { requireTinyImage, startDaemon } from "../harness.ts";
import { ConsoleShell } from "../../src/introspection/testing/live-guest.ts";

const SOAK_SECONDS = Math.max(10, Number(process.env.VIGIL_SOAK_SECONDS ?? 120));

type Watch = { vm: string; status: string; sweeps: number; lastSweepMs: number | null; activeFindings: number };
type AuditRecord = { seq: number; actor: string; action: string; details: Record<string, unknown> };

test(`a clean guest watched for ${SOAK_SECONDS} s under an ordinary workload raises no finding`, { timeout: (SOAK_SECONDS + 300) * 1000 }, async (t) => {
  requireTinyImage();
  const d = await startDaemon(t);
  const vm = "soak";
  await d.api("POST", "/v1/vms", { name: vm, memoryMiB: 256, vcpus: 1 });
  await d.api("POST", `/v1/vms/${vm}/start`, { wait: true });
  await d.api("PUT", `/v1/vms/${vm}/watch`, { intervalMs: 1000, policy: "pause" });
  const watch = async (): Promise<Watch> => (await d.api<{ watches: Watch[] }>("GET", "/v1/watches")).watches.find((w) => w.vm === vm)!;
  for (let i = 0; (await watch()).status !== "watching"; i++) {
    if (i > 400) assert.fail("the watch did not start");
    await new Promise((r) => setTimeout(r, 150));
  }
  const { records: head } = await d.api<{ records: AuditRecord[] }>("GET", "/v1/audit?tail=true&limit=1");
  const from = head[0]?.seq ?? 0;
  const sweeps0 = (await watch()).sweeps;
  const shell = await ConsoleShell.open(vm, d.target);
  t.after(() => shell.close());
  const release = (await shell.run("uname -r")).split(/\r?\n/).map((l) => l.trim()).find((l) => /cloud-amd64$/.test(l));
  assert.ok(release, "the guest's kernel release");
  await shell.run("mount -t tracefs nodev /sys/kernel/tracing");
  // Process churn for the whole run: a subshell forking ls, cat and sleep every second.
  await shell.run("(while :; do ls /proc >/dev/null; cat /proc/meminfo >/dev/null; sleep 1; done) >/dev/null 2>&1 &");

  const tracing = "/sys/kernel/tracing";
  // The function tracer stays on for most of the run, so the watch's rotating text window makes at least one
  // full pass over its ~2,900 patched pages (at 120 s; shorter runs see part of them).
  const plan: Array<[number, string, string]> = [
    [0.05, "tracepoint sched_switch on", `echo 1 > ${tracing}/events/sched/sched_switch/enable`],
    [0.15, "tracepoint sched_switch off", `echo 0 > ${tracing}/events/sched/sched_switch/enable`],
    [0.2, "module button unloaded", "rmmod button"],
    [0.25, "module button loaded", `insmod /lib/modules/${release}/button.ko`],
    [0.3, "function tracer on", `echo function > ${tracing}/current_tracer`],
    [0.9, "function tracer off", `echo nop > ${tracing}/current_tracer`],
  ];
  const done: string[] = [];
  const sweepMs: number[] = [];
  const agentCommands = [["uname", "-a"], ["df"], ["free"], ["cat", "/proc/loadavg"], ["sha256sum", "/init"], ["ls", "/data"], ["date"]];
  const start = Date.now();
  const deadline = start + SOAK_SECONDS * 1000;
  let tracer = { explainedPages: 0, sweeps: 0, fullPass: 0 };
  let tracerOnAt = 0;
  for (let i = 0; Date.now() < deadline; i++) {
    const elapsed = (Date.now() - start) / (SOAK_SECONDS * 1000);
    while (plan.length > 0 && plan[0]![0] <= elapsed) {
      const [, what, cmd] = plan.shift()!;
      if (what === "function tracer off") {
        // What the watch made of the kernel's self-patching: pages explained (not alarmed) so far.
        const r = await d.api<{ textPatches: { explainedPages: number }; coverage: { fullPassEverySweeps: number } }>("POST", `/v1/vms/${vm}/introspect`, {});
        tracer = { explainedPages: r.textPatches.explainedPages, sweeps: (await watch()).sweeps - tracerOnAt, fullPass: r.coverage.fullPassEverySweeps };
      }
      const out = await shell.run(cmd, 120_000);
      assert.doesNotMatch(out, /can't|No such|not found|Invalid/i, `${what}: ${out}`);
      done.push(what);
      if (what === "function tracer on") tracerOnAt = (await watch()).sweeps;
    }
    const argv = agentCommands[i % agentCommands.length]!;
    await d.api("POST", `/v1/vms/${vm}/guest/exec`, { argv });
    if (i % 3 === 0) await d.api("GET", `/v1/vms/${vm}/guest/ps`);
    if (i % 4 === 0) await shell.run(`echo round ${i} > /data/soak-${i % 8}; sync; sleep 2 &`);
    const w = await watch();
    if (w.lastSweepMs !== null) sweepMs.push(w.lastSweepMs);
    await new Promise((r) => setTimeout(r, 1500));
  }
  const final = await watch();
  const { records } = await d.api<{ records: AuditRecord[] }>("GET", `/v1/audit?after=${from}&limit=10000`);
  const findings = records.filter((r) => r.action === "ids.finding" || r.action === "ids.policy");
  const sorted = [...sweepMs].sort((a, b) => a - b);
  t.diagnostic(`soak ${SOAK_SECONDS} s: ${final.sweeps - sweeps0} sweeps, median sweep ${sorted[sorted.length >> 1]?.toFixed(1)} ms (max seen ${sorted.at(-1)?.toFixed(1)} ms), workload steps: ${done.join(", ")}, function tracer on for ${tracer.sweeps} sweeps (a full pass is ${tracer.fullPass}): ${tracer.explainedPages} pages explained`);
  assert.deepEqual(findings.map((r) => `${r.action} ${String(r.details.check ?? "")}: ${String(r.details.message ?? r.details.error ?? "")}`), []);
  assert.equal(final.status, "watching");
  assert.equal((await d.api<{ state: string }>("GET", `/v1/vms/${vm}`)).state, "running", "the pause policy never fired");
  assert.ok(final.sweeps - sweeps0 >= SOAK_SECONDS * 0.6, `${final.sweeps - sweeps0} sweeps in ${SOAK_SECONDS} s`);
  assert.equal(done.length, 6, "every workload step ran");
});
