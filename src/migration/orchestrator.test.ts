import { strict as assert } from "node:assert";
import { test } from "node:test";
import { VigilError } from "../errors.ts";
import type { DelegatedActor } from "../cluster/types.ts";
import { REQUIRED_PARAMETERS, type QemuReport } from "./negotiate.ts";
import { DEFAULT_LIMITS, MigrationOrchestrator, type AgentCaller, type MigrationRow, type MigrationStore, type OutgoingStatus } from "./orchestrator.ts";

const ADMIN: DelegatedActor = { name: "root", roles: ["admin"], groups: [], introspect: true };
const bundle = { caPem: "ca", certPem: "cert", keyPem: "key" };

function memoryStore(): MigrationStore & { rows: Map<string, MigrationRow>; placements: Map<string, { vmId: string; host: string }> } {
  const rows = new Map<string, MigrationRow>();
  const placements = new Map([["web", { vmId: "vm-1", host: "a" }]]);
  return {
    rows,
    placements,
    create: async (r) => void rows.set(r.id, { ...r }),
    update: async (id, c) => void rows.set(id, { ...rows.get(id)!, ...c }),
    get: async (id) => rows.get(id),
    listActive: async () => [...rows.values()].filter((r) => r.state === "running"),
    placementOf: async (n) => placements.get(n),
    setPlacement: async (vmId, n, host) => void placements.set(n, { vmId, host }),
  };
}

const qemu = (host: string, capabilities = ["return-path", "pause-before-switchover", "events", "auto-converge", "multifd"]): QemuReport => ({
  host,
  version: "7.2.22",
  capabilities,
  parameters: [...REQUIRED_PARAMETERS],
  objectTypes: ["tls-creds-x509", "authz-simple"],
  machines: ["pc-i440fx-7.2"],
  cpus: [{ name: "max", migrationSafe: false }],
});

/** A scripted pair of agents: `phases` are what the source reports, one per poll. */
function fakeAgents(phases: OutgoingStatus["phase"][], opts: { failIncoming?: boolean; targetRunning?: boolean; targetCapabilities?: string[] } = {}) {
  const calls: string[] = [];
  const bodies = new Map<string, unknown>();
  let poll = 0;
  const caller: AgentCaller = {
    async call<T>(host: string, method: string, path: string, body: unknown): Promise<T> {
      calls.push(`${host} ${method} ${path}`);
      bodies.set(path, body);
      if (path === "/v1/agent/qemu") return qemu("ignored", opts.targetCapabilities) as T;
      if (path.endsWith("/qemu")) return { qemu: qemu("ignored"), hardware: { machine: "pc-i440fx-7.2", cpu: "max" }, state: "running" } as T;
      if (path.endsWith("/dossier")) return { vm: "web" } as T;
      if (path === "/v1/agent/migrations/incoming") {
        if (opts.failIncoming) throw new VigilError("VIGIL_HOST", "no room");
        return { ramPort: 4001, nbdPort: 4002, disks: [{ node: "disk0", exportName: "disk0", sync: "top" }] } as T;
      }
      if (path === "/v1/agent/migrations/outgoing") return {} as T;
      if (method === "GET" && path.startsWith("/v1/agent/migrations/")) {
        const phase = phases[Math.min(poll++, phases.length - 1)]!;
        if ((phase as string) === "gone") throw new VigilError("VIGIL_NOT_FOUND", "no such migration");
        const result = phase === "completed" ? { downtimeMs: 12, totalMs: 900, ramTransferred: 1, diskTransferred: 2, iterations: 3, finalDowntimeLimitMs: 10, throttlePercent: 0 } : null;
        return { id: "x", phase, progress: { phase, ramTransferred: poll, ramRemaining: 10, ramTotal: 100, dirtyRate: 0, expectedDowntimeMs: 1, downtimeLimitMs: 10, iterations: poll, diskDone: 0, diskTotal: 0 }, result, error: phase === "failed" ? "stream broke" : null } as T;
      }
      if (method === "GET" && path === "/v1/vms/web") {
        if (host === "b" && (opts.targetRunning ?? true)) return { state: "running", owner: "user:root" } as T;
        throw new VigilError("VIGIL_VM_NOT_FOUND", "no");
      }
      return {} as T;
    },
  };
  return { caller, calls, bodies };
}

function orchestrator(store: MigrationStore, agents: AgentCaller, records: string[]) {
  return new MigrationOrchestrator({
    agents,
    store,
    hostAddress: (n) => ({ a: "10.0.0.1", b: "10.0.0.2" })[n],
    agentAddress: (n) => ({ a: "10.0.0.1:7451", b: "10.0.0.2:7451" })[n],
    isReady: (n) => n === "a" || n === "b",
    issuePair: async () => ({ src: bundle, dst: bundle, srcSubject: "CN=x" }),
    record: async (action, vm, result, _actor, details) => void records.push(`${action} ${vm} ${result} ${String(details.state)}`),
    event: async () => undefined,
    log: { warn: () => undefined, info: () => undefined },
    pollMs: 1,
  });
}

test("a migration that completes moves the placement to the target and records the result", async () => {
  const store = memoryStore();
  const { caller, calls, bodies } = fakeAgents(["disks", "ram", "switchover", "completed"]);
  const records: string[] = [];
  const o = orchestrator(store, caller, records);
  const row = await o.start(ADMIN, "web", "b", DEFAULT_LIMITS);
  const final = await o.wait(row.id);
  assert.equal(final.state, "completed");
  assert.equal(final.result?.downtimeMs, 12);
  assert.equal(store.placements.get("web")?.host, "b");
  assert.deepEqual(records, ["vm.migrate web ok completed"]);
  // The negotiated set is in the row and goes to the source; multifd is declined, with its reason.
  assert.deepEqual(final.options.negotiated?.capabilities, ["return-path", "pause-before-switchover", "events", "auto-converge"]);
  assert.deepEqual(final.options.negotiated?.declined.map((d) => d.capability), ["multifd"]);
  assert.deepEqual((bodies.get("/v1/agent/migrations/outgoing") as { capabilities: string[] }).capabilities, final.options.negotiated?.capabilities);
  assert.deepEqual((bodies.get("/v1/agent/migrations/outgoing") as { limits: unknown }).limits, DEFAULT_LIMITS);
  // Order: both ends' QEMU first, then dossier from the source, incoming on the target, outgoing on the source.
  assert.deepEqual(calls.slice(0, 2).sort(), ["a GET /v1/agent/vms/web/qemu", "b GET /v1/agent/qemu"]);
  assert.deepEqual(calls.slice(2, 5), ["a GET /v1/agent/vms/web/dossier", "b POST /v1/agent/migrations/incoming", "a POST /v1/agent/migrations/outgoing"]);
  assert.ok(!calls.some((c) => c.endsWith("/abort")), "nothing to undo on success");
});

test("a source that reports failure: the target is told to abort, the VM stays placed on the source", async () => {
  const store = memoryStore();
  const { caller, calls } = fakeAgents(["disks", "failed"]);
  const records: string[] = [];
  const o = orchestrator(store, caller, records);
  const final = await o.wait((await o.start(ADMIN, "web", "b", DEFAULT_LIMITS)).id);
  assert.equal(final.state, "failed");
  assert.equal(final.error, "stream broke");
  assert.equal(store.placements.get("web")?.host, "a");
  assert.ok(calls.some((c) => c.startsWith("b POST /v1/agent/migrations/") && c.endsWith("/abort")));
  assert.deepEqual(records, ["vm.migrate web error failed"]);
});

test("an incoming step that fails never starts the outgoing side", async () => {
  const store = memoryStore();
  const { caller, calls } = fakeAgents(["completed"], { failIncoming: true });
  const o = orchestrator(store, caller, []);
  const final = await o.wait((await o.start(ADMIN, "web", "b", DEFAULT_LIMITS)).id);
  assert.equal(final.state, "failed");
  assert.match(final.error ?? "", /no room/);
  assert.ok(!calls.some((c) => c.includes("outgoing")));
});

test("refusals: same host, unknown host, unknown VM, a second migration of the same VM", async () => {
  const store = memoryStore();
  const { caller } = fakeAgents(["disks", "disks", "disks", "disks", "disks", "completed"]);
  const o = orchestrator(store, caller, []);
  await assert.rejects(o.start(ADMIN, "web", "a", DEFAULT_LIMITS), /already on host/);
  await assert.rejects(o.start(ADMIN, "web", "c", DEFAULT_LIMITS), /cannot take VMs now/);
  await assert.rejects(o.start(ADMIN, "db", "b", DEFAULT_LIMITS), /does not exist/);
  const first = await o.start(ADMIN, "web", "b", DEFAULT_LIMITS);
  await assert.rejects(o.start(ADMIN, "web", "b", DEFAULT_LIMITS), /already migrating/);
  await o.wait(first.id);
});

test("a manager restarted mid-migration follows it again; a source that forgot it is settled by where the VM runs", async () => {
  const store = memoryStore();
  const records: string[] = [];
  // The first manager starts it and "dies" (we just stop looking); the row stays running.
  const first = fakeAgents(["disks"]);
  const o1 = orchestrator(store, first.caller, []);
  const row = await o1.start(ADMIN, "web", "b", DEFAULT_LIMITS);
  await new Promise((r) => setTimeout(r, 20));
  o1.close();
  assert.equal((await o1.wait(row.id)).state, "running", "a closed manager leaves the row running");
  // The second manager: the source restarted and no longer knows the migration; the target runs the VM.
  const second = fakeAgents(["gone" as OutgoingStatus["phase"]]);
  const o2 = orchestrator(store, second.caller, records);
  assert.equal(await o2.reconcile(ADMIN), 1);
  const final = await o2.wait(row.id);
  assert.equal(final.state, "completed");
  assert.equal(store.placements.get("web")?.host, "b");
});

test("a target whose QEMU lacks a required capability is refused before anything is asked of it, and audited", async () => {
  const store = memoryStore();
  const { caller, calls } = fakeAgents(["completed"], { targetCapabilities: ["pause-before-switchover", "events", "auto-converge"] });
  const records: string[] = [];
  const o = orchestrator(store, caller, records);
  await assert.rejects(o.start(ADMIN, "web", "b", DEFAULT_LIMITS), (e: Error & { code?: string }) => e.code === "VIGIL_CONFLICT" && /host "b": its QEMU lacks the migration capability "return-path" \(required\)/.test(e.message));
  assert.deepEqual(calls.filter((c) => c.startsWith("b ")), ["b GET /v1/agent/qemu"], "the target was only asked what it can do");
  assert.ok(!calls.some((c) => c.includes("dossier") || c.includes("/migrations/")));
  assert.equal(store.rows.size, 0, "no migration row");
  assert.deepEqual(records, ["vm.migrate web error refused"]);
});

/** Agents for a stopped VM's move: `cold` is what the source reports per poll; `failRelease` makes it refuse to let go. */
function coldAgents(cold: ("disks" | "completed" | "failed")[], opts: { failRelease?: boolean; machines?: string[] } = {}) {
  const calls: string[] = [];
  let poll = 0;
  const caller: AgentCaller = {
    async call<T>(host: string, method: string, path: string): Promise<T> {
      calls.push(`${host} ${method} ${path}`);
      if (path === "/v1/agent/qemu") return { ...qemu("b", []), machines: opts.machines ?? ["pc-i440fx-7.2"] } as T;
      if (path.endsWith("/qemu")) return { qemu: qemu("a", []), hardware: { machine: "pc-i440fx-7.2", cpu: "max" }, state: "stopped" } as T;
      if (path.endsWith("/dossier")) return { vm: "web" } as T;
      if (path === "/v1/agent/cold/incoming") return { disks: [{ name: "root", sync: "top", virtualSize: 1 }] } as T;
      if (path === "/v1/agent/cold/outgoing") return { id: "x" } as T;
      if (method === "GET" && path.startsWith("/v1/agent/cold/")) {
        const phase = cold[Math.min(poll++, cold.length - 1)]!;
        return { id: "x", phase, diskDone: poll * 10, diskTotal: 30, error: phase === "failed" ? "disk refused" : null } as T;
      }
      if (path.endsWith("/commit")) return { owner: "user:bob", state: "stopped" } as T;
      if (path.endsWith("/release") && opts.failRelease) throw new VigilError("VIGIL_INVALID_STATE", "it was started meanwhile");
      return {} as T;
    },
  };
  return { caller, calls };
}

test("a stopped VM moves cold: import, disks pushed, commit on the target, then the source lets go", async () => {
  const store = memoryStore();
  const { caller, calls } = coldAgents(["disks", "disks", "completed"]);
  const records: string[] = [];
  const o = orchestrator(store, caller, records);
  const final = await o.wait((await o.start(ADMIN, "web", "b", DEFAULT_LIMITS)).id);
  assert.equal(final.state, "completed", final.error ?? "");
  assert.equal(final.options.negotiated?.how, "cold");
  assert.deepEqual(final.options.negotiated?.capabilities, [], "no QEMU stream, no capabilities: a cold move needs none");
  assert.equal(final.result?.diskTransferred, 30);
  assert.equal(store.placements.get("web")?.host, "b");
  assert.deepEqual(calls.slice(2).filter((c) => !c.startsWith("a GET /v1/agent/cold/")), [
    "a GET /v1/agent/vms/web/dossier", "b POST /v1/agent/cold/incoming", "a POST /v1/agent/cold/outgoing", `b POST /v1/agent/cold/${final.id}/commit`, `a POST /v1/agent/cold/${final.id}/release`,
  ]);
  assert.deepEqual(records, ["vm.migrate web ok completed"]);
});

test("a cold move whose copy fails aborts the target's incoming VM; one whose source cannot let go discards the target's copy", async () => {
  for (const [agents, error] of [[coldAgents(["disks", "failed"]), /copying the disks failed: disk refused; the VM stays on a/], [coldAgents(["completed"], { failRelease: true }), /the source could not let go of the VM \(it was started meanwhile\); the target's copy was removed; the VM stays on a/]] as const) {
    const store = memoryStore();
    const o = orchestrator(store, agents.caller, []);
    const final = await o.wait((await o.start(ADMIN, "web", "b", DEFAULT_LIMITS)).id);
    assert.equal(final.state, "failed");
    assert.match(final.error ?? "", error);
    assert.ok(agents.calls.includes(`b POST /v1/agent/cold/${final.id}/abort`));
    assert.equal(store.placements.get("web")?.host, "a");
  }
});

test("a cold move to a host that cannot run the VM's machine type is refused before the target is asked anything else", async () => {
  const store = memoryStore();
  const { caller, calls } = coldAgents(["completed"], { machines: ["pc-q35-7.2"] });
  const o = orchestrator(store, caller, []);
  await assert.rejects(o.start(ADMIN, "web", "b", DEFAULT_LIMITS), /host "b": its QEMU cannot run the VM's machine type "pc-i440fx-7\.2"/);
  assert.deepEqual(calls.filter((c) => c.startsWith("b ")), ["b GET /v1/agent/qemu"]);
  assert.equal(store.rows.size, 0);
});

test("cancelling a cold move: it stops at the next poll, the target's copy is aborted, the VM stays", async () => {
  const store = memoryStore();
  const { caller, calls } = coldAgents(["disks"]);
  const o = orchestrator(store, caller, []);
  const row = await o.start(ADMIN, "web", "b", DEFAULT_LIMITS);
  await new Promise((r) => setTimeout(r, 10));
  await o.cancel(ADMIN, "web");
  const final = await o.wait(row.id);
  assert.equal(final.state, "cancelled");
  assert.ok(calls.includes(`b POST /v1/agent/cold/${row.id}/abort`));
  assert.ok(!calls.some((c) => c.endsWith("/commit") || c.includes("/v1/agent/migrations/")), "nothing committed, no live-migration call");
  assert.equal(store.placements.get("web")?.host, "a");
});

test("a cold move found running after a manager restart is settled by where the VM is", async () => {
  for (const [onTarget, expected] of [["stopped", "completed"], ["incoming", "failed"]] as const) {
    const store = memoryStore();
    const first = coldAgents(["disks"]);
    const o1 = orchestrator(store, first.caller, []);
    const row = await o1.start(ADMIN, "web", "b", DEFAULT_LIMITS);
    o1.close();
    await o1.wait(row.id);
    const calls: string[] = [];
    const caller: AgentCaller = {
      async call<T>(host: string, method: string, path: string): Promise<T> {
        calls.push(`${host} ${method} ${path}`);
        if (method === "GET" && path === "/v1/vms/web") {
          if (host === "b") return { state: onTarget, owner: "user:bob" } as T;
          throw new VigilError("VIGIL_VM_NOT_FOUND", "no");
        }
        return {} as T;
      },
    };
    const o2 = orchestrator(store, caller, []);
    assert.equal(await o2.reconcile(ADMIN), 1);
    const final = await o2.wait(row.id);
    assert.equal(final.state, expected);
    assert.equal(store.placements.get("web")?.host, expected === "completed" ? "b" : "a");
    assert.equal(calls.includes(`b POST /v1/agent/cold/${row.id}/abort`), expected === "failed");
  }
});
