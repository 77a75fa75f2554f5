/**
 * The IDS service over the HTTP API, without QEMU: who may introspect and watch (the separate introspect grant
 * plus read access to the VM), strict input, response shapes, and watches that persist across daemon restarts
 * and go away with their VM. Real guests are in test/integration/introspection*.test.ts.
 */
import { test, type TestContext } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { z } from "zod";
import { startDaemon, type Daemon } from "../daemon/daemon.ts";
import { silentLogger } from "../log.ts";
import { createVmRequestSchema, resolveSpec } from "../vm/spec.ts";
import type { VmRuntime } from "../host/vm-runtime.ts";
import { memfdQemu } from "../host/testing/memfd-qemu.ts";

interface Fixture {
  home: string;
  daemon: Daemon;
  tokens: Record<string, string>;
  vmId: string;
}

async function open(home: string, introspection?: { settleMs?: number; agentSilentMs?: number }): Promise<Daemon> {
  return startDaemon({ home, cache: join(home, "no-cache"), listen: "none", log: silentLogger(), ...(introspection ? { introspection } : {}) });
}

async function fixture(t: TestContext, introspection?: { settleMs?: number; agentSilentMs?: number }): Promise<Fixture> {
  const home = mkdtempSync(join(tmpdir(), "vigil-ids-"));
  const daemon = await open(home, introspection);
  const f: Fixture = { home, daemon, tokens: {}, vmId: "" };
  t.after(async () => {
    await f.daemon.close();
    rmSync(home, { recursive: true, force: true });
  });
  const users = daemon.deps.users;
  // ivy owns the VM and holds the introspect grant; ian has the grant but not the VM; bob owns it without the
  // grant; eve is an admin (roles never include introspection); ada is an auditor (reads every VM) with the grant.
  for (const [name, roles, introspect] of [["ivy", ["owner"], true], ["ian", ["owner"], true], ["bob", ["owner"], false], ["eve", ["admin"], false], ["ada", ["auditor"], true]] as const) {
    await users.create({ name, roles: [...roles], introspect }, "test");
    f.tokens[name] = (await users.issueToken(name, "t")).token;
  }
  const spec = resolveSpec(createVmRequestSchema.parse({ name: "target" }), { name: "tiny", boot: { kind: "kernel", kernel: "/k", initrd: "/i", cmdline: "" }, disk: "/d" }, { cpu: "max" });
  const vm = await daemon.repo.insert({ id: crypto.randomUUID(), name: "target", spec, state: "stopped", host: "h", vmgenid: crypto.randomUUID(), generation: 1, owner: "user:ivy", approver: null, purpose: null, expiresAt: null, labels: {}, lineage: { kind: "image", image: "tiny" }, isTemplate: false, createdBy: "ivy", createdAt: new Date().toISOString() });
  f.vmId = vm.id;
  return f;
}

async function req(f: Fixture, who: string, method: string, path: string, body?: unknown): Promise<{ status: number; json: unknown }> {
  const headers: Record<string, string> = { authorization: `Bearer ${f.tokens[who]}` };
  if (body !== undefined) headers["content-type"] = "application/json";
  const res = await f.daemon.app.request(path, { method, headers, ...(body !== undefined ? { body: JSON.stringify(body) } : {}) }, { transport: "tcp" });
  return { status: res.status, json: await res.json() };
}

function schemaOf(f: Fixture, method: string, path: string): z.ZodType {
  for (const def of f.daemon.app.openAPIRegistry.definitions) {
    if (def.type !== "route" || def.route.method !== method || def.route.path !== path) continue;
    const r = def.route.responses[200] as { content?: Record<string, { schema?: unknown }> } | undefined;
    const s = r?.content?.["application/json"]?.schema;
    if (s) return s as z.ZodType;
  }
  throw new Error(`no schema for ${method} ${path}`);
}

test("introspection needs the introspect grant and read access to the VM; denials are audited", async (t) => {
  const f = await fixture(t);
  const routes: Array<[string, string, unknown]> = [
    ["POST", "/v1/vms/target/introspect", {}],
    ["GET", "/v1/vms/target/findings", undefined],
    ["PUT", "/v1/vms/target/watch", { intervalMs: 1000 }],
    ["DELETE", "/v1/vms/target/watch", undefined],
  ];
  for (const who of ["ian", "bob", "eve"]) {
    // ian (with the grant) and bob may not read the VM: to them it does not exist (404, audited as denied).
    for (const [method, path, body] of routes) assert.equal((await req(f, who, method, path, body)).status, who === "eve" ? 403 : 404, `${who} ${method} ${path}`);
  }
  const [last] = await f.daemon.deps.audit.list({ tail: true, limit: 1 });
  assert.equal(last?.result, "denied");
  assert.equal(last?.actor, "eve");
  assert.equal((last?.details as { permission?: string }).permission, "vm.introspect");
  assert.equal((await req(f, "eve", "GET", "/v1/watches")).status, 403, "an admin without the grant sees no watches");
  assert.deepEqual((await req(f, "ian", "GET", "/v1/watches")).json, { watches: [] });
  // The owner with the grant: a stopped VM can be watched (armed) but not swept.
  const put = await req(f, "ivy", "PUT", "/v1/vms/target/watch", { intervalMs: 2000, policy: "pause" });
  assert.equal(put.status, 200, JSON.stringify(put.json));
  assert.ok(schemaOf(f, "put", "/v1/vms/{name}/watch").safeParse(put.json).success);
  assert.equal((put.json as { status: string }).status, "armed");
  const watches = await req(f, "ivy", "GET", "/v1/watches");
  assert.ok(schemaOf(f, "get", "/v1/watches").safeParse(watches.json).success);
  assert.deepEqual((watches.json as { watches: Array<{ vm: string; policy: string; intervalMs: number; startedBy: string }> }).watches.map((w) => [w.vm, w.policy, w.intervalMs, w.startedBy]), [["target", "pause", 2000, "ivy"]]);
  assert.deepEqual((await req(f, "ian", "GET", "/v1/watches")).json, { watches: [] }, "only watches on VMs you may introspect");
  const findings = await req(f, "ivy", "GET", "/v1/vms/target/findings?limit=5");
  assert.ok(schemaOf(f, "get", "/v1/vms/{name}/findings").safeParse(findings.json).success, JSON.stringify(findings.json));
  assert.deepEqual((findings.json as { active: unknown[]; recent: unknown[] }).recent, []);
  const sweep = await req(f, "ivy", "POST", "/v1/vms/target/introspect", {});
  assert.equal(sweep.status, 409);
  assert.match((sweep.json as { error: { message: string } }).error.message, /Cannot introspect VM "target": it is stopped/);
  const records = await f.daemon.deps.audit.list({ targetId: f.vmId });
  assert.deepEqual(records.filter((r) => r.actor === "ivy").map((r) => `${r.action}:${r.result}`), ["ids.watch:ok", "vm.introspect:error"]);
  const del = await req(f, "ivy", "DELETE", "/v1/vms/target/watch");
  assert.deepEqual(del.json, { vm: "target", stopped: true });
  assert.deepEqual((await req(f, "ivy", "DELETE", "/v1/vms/target/watch")).json, { vm: "target", stopped: false });
});

test("watch input is strict: interval bounds, known policies, no unknown fields", async (t) => {
  const f = await fixture(t);
  for (const [body, field] of [
    [{ intervalMs: 10 }, "intervalMs"],
    [{ intervalMs: 1.5 }, "intervalMs"],
    [{ policy: "nuke" }, "policy"],
    [{ interval: 1000 }, "interval"],
  ] as const) {
    const r = await req(f, "ivy", "PUT", "/v1/vms/target/watch", body);
    assert.equal(r.status, 400, JSON.stringify(body));
    assert.equal((r.json as { error: { field?: string } }).error.field, field);
  }
  assert.equal((await req(f, "ivy", "POST", "/v1/vms/target/introspect", { carve: "yes" })).status, 400);
  assert.equal((await req(f, "ivy", "PUT", "/v1/vms/nope/watch", { intervalMs: 1000 })).status, 404);
});

test("watches survive a daemon restart and go away with their VM", async (t) => {
  const f = await fixture(t);
  assert.equal((await req(f, "ivy", "PUT", "/v1/vms/target/watch", { intervalMs: 1500, policy: "snapshot-and-pause", noNewModules: true })).status, 200);
  await f.daemon.close();
  f.daemon = await open(f.home);
  const after = (await req(f, "ivy", "GET", "/v1/watches")).json as { watches: Array<{ vm: string; intervalMs: number; policy: string; status: string; noNewModules: boolean }> };
  assert.deepEqual(after.watches.map((w) => [w.vm, w.intervalMs, w.policy, w.status, w.noNewModules]), [["target", 1500, "snapshot-and-pause", "armed", true]], "the no-new-modules policy is kept with the watch");
  await f.daemon.repo.delete(f.vmId);
  assert.deepEqual((await req(f, "ivy", "GET", "/v1/watches")).json, { watches: [] });
});

test("a containment policy needs the right to pause (and snapshot) by hand: a reader with the grant can only alert", async (t) => {
  const f = await fixture(t);
  const denied = async (body: unknown, method = "PUT"): Promise<string | undefined> => {
    const r = await req(f, "ada", method, "/v1/vms/target/watch", body);
    assert.equal(r.status, 403, JSON.stringify(body));
    const [last] = await f.daemon.deps.audit.list({ tail: true, limit: 1 });
    assert.equal(last?.result, "denied");
    return (last?.details as { permission?: string }).permission;
  };
  assert.equal((await req(f, "ada", "PUT", "/v1/vms/target/watch", { policy: "alert" })).status, 200, "alert needs only the grant and read access");
  assert.equal(await denied({ policy: "pause" }), "vm.control");
  assert.equal(await denied({ policy: "snapshot-and-pause" }), "vm.control");
  // The owner sets containment; the reader can neither weaken nor stop it.
  assert.equal((await req(f, "ivy", "PUT", "/v1/vms/target/watch", { policy: "snapshot-and-pause" })).status, 200);
  assert.equal(await denied({ policy: "alert" }), "vm.control");
  assert.equal(await denied(undefined, "DELETE"), "vm.control");
  const w = (await req(f, "ivy", "GET", "/v1/watches")).json as { watches: Array<{ policy: string; startedBy: string }> };
  assert.deepEqual(w.watches.map((x) => [x.policy, x.startedBy]), [["snapshot-and-pause", "ivy"]]);
  assert.equal((await req(f, "ivy", "DELETE", "/v1/vms/target/watch")).status, 200);
});

/**
 * A QEMU as the service sees it: a real QEMU paused before its first instruction holds the RAM memfd (zeros:
 * nothing a kernel model can be built from), QMP is faked and answers with a RAM layout and registers, and the
 * agent answers — or never does.
 */
async function fakeRuntime(t: TestContext, memoryMiB: number, agentAnswers: boolean): Promise<VmRuntime> {
  const pid = await memfdQemu(t, memoryMiB);
  const mtree = `FlatView #0\n AS "memory", root: system\n Root memory region: system\n  0000000000000000-0000000000ffffff (prio 0, ram): ram0\n`;
  const regs = `CPU#0\nIDT=     fffffe0000000000 00000fff\nCR0=80050033 CR2=0000000000000000 CR3=0000000000100000 CR4=00750ef0\nEFER=0000000000000d01\n`;
  const agent = { ping: async () => (agentAnswers ? undefined : Promise.reject(new Error("no answer"))), ps: async () => ({ processes: [] }), exec: async () => ({ exitCode: 1, stdout: "", stderr: "", truncated: false }) };
  return {
    pid,
    layout: {},
    qmp: { onEvent: () => () => undefined, hmp: async (cmd: string) => (cmd.startsWith("info mtree") ? mtree : regs) },
    status: async () => "running",
    exited: new Promise(() => undefined),
    agentClient: async () => agent,
  } as unknown as VmRuntime;
}

async function findingsOf(f: Fixture, check: string, timeoutMs: number): Promise<Array<{ check: string; severity: string }>> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const r = (await req(f, "ivy", "GET", "/v1/vms/target/findings?limit=10")).json as { recent: Array<{ check: string; severity: string }> };
    if (r.recent.some((x) => x.check === check) || Date.now() > deadline) return r.recent;
    await new Promise((res) => setTimeout(res, 50));
  }
}

test("a watched guest whose kernel cannot be baselined is a finding, not silence", async (t) => {
  const f = await fixture(t, { settleMs: 10 });
  assert.equal((await req(f, "ivy", "PUT", "/v1/vms/target/watch", { intervalMs: 250 })).status, 200);
  const svc = f.daemon.deps.introspection;
  const vm = await f.daemon.repo.getById(f.vmId);
  svc.attach(vm, await fakeRuntime(t, vm.spec.memoryMiB, true));
  const recent = await findingsOf(f, "baseline-failed", 10_000);
  assert.deepEqual(recent.map((x) => [x.check, x.severity]), [["baseline-failed", "high"]], "reported once");
  const w = (await req(f, "ivy", "GET", "/v1/watches")).json as { watches: Array<{ status: string; problem: string | null }> };
  assert.equal(w.watches[0]?.status, "error");
  assert.ok(w.watches[0]?.problem, "the watch says why");
});

test("a watched guest whose agent never answers is reported once it has run long enough", async (t) => {
  const f = await fixture(t, { settleMs: 10, agentSilentMs: 300 });
  assert.equal((await req(f, "ivy", "PUT", "/v1/vms/target/watch", { intervalMs: 250 })).status, 200);
  const vm = await f.daemon.repo.getById(f.vmId);
  f.daemon.deps.introspection.attach(vm, await fakeRuntime(t, vm.spec.memoryMiB, false));
  const recent = await findingsOf(f, "agent-silent", 10_000);
  assert.deepEqual(recent.map((x) => [x.check, x.severity]), [["agent-silent", "medium"]]);
  await new Promise((r) => setTimeout(r, 800));
  assert.equal(((await req(f, "ivy", "GET", "/v1/vms/target/findings?limit=10")).json as { recent: unknown[] }).recent.length, 1, "once per boot");
});

test("a recording QEMU is not watched live: no HMP reads, the watch says it records, a sweep is refused with why", async (t) => {
  const f = await fixture(t, { settleMs: 10 });
  assert.equal((await req(f, "ivy", "PUT", "/v1/vms/target/watch", { intervalMs: 250 })).status, 200);
  const vm = await f.daemon.repo.update(f.vmId, { state: "running" });
  const rt = await fakeRuntime(t, vm.spec.memoryMiB, true);
  let hmp = 0;
  const qmp = rt.qmp as unknown as { hmp: (cmd: string) => Promise<string> };
  const real = qmp.hmp;
  qmp.hmp = (cmd) => {
    hmp++;
    return real(cmd);
  };
  rt.recording = true;
  f.daemon.deps.introspection.attach(vm, rt);
  await new Promise((r) => setTimeout(r, 600));
  assert.equal(hmp, 0, "nothing is sent to the recording QEMU");
  const w = (await req(f, "ivy", "GET", "/v1/watches")).json as { watches: Array<{ status: string; problem: string | null }> };
  assert.equal(w.watches[0]?.status, "recording");
  assert.match(w.watches[0]?.problem ?? "", /checked through its recording/);
  const r = await req(f, "ivy", "POST", "/v1/vms/target/introspect", {});
  assert.equal(r.status, 409);
  assert.match(JSON.stringify(r.json), /while it records/);
});
