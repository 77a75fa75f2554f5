/**
 * Starting a VM with a bridged NIC (docs/network.md, "VM NICs"): with VIGIL_JAIL=off it is refused before anything
 * changes (the jail opens the tap; QEMU never may), naming the NIC and the reason; so is a start on a daemon
 * without a switch. `showcmd` of such a VM unjailed says the same.
 */
import { test, type TestContext } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startDaemon, type Daemon } from "../daemon/daemon.ts";
import { silentLogger } from "../log.ts";
import { createVmRequestSchema, resolveSpec } from "./spec.ts";

async function daemonWith(t: TestContext, env: Record<string, string>): Promise<Daemon> {
  const old = Object.fromEntries(Object.keys(env).map((k) => [k, process.env[k]]));
  Object.assign(process.env, env);
  const home = mkdtempSync(join(tmpdir(), "vigil-bnic-"));
  const daemon = await startDaemon({ home, cache: join(home, "no-cache"), listen: "none", log: silentLogger() });
  t.after(async () => {
    await daemon.close();
    rmSync(home, { recursive: true, force: true });
    for (const [k, v] of Object.entries(old)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  });
  const spec = resolveSpec(createVmRequestSchema.parse({ name: "b1", memoryMiB: 128, nics: [{ restrict: true }, { network: "lab" }] }), { name: "tiny", boot: { kind: "kernel", kernel: "/nonexistent/k", initrd: "/nonexistent/i", cmdline: "" }, disk: "/d" }, { cpu: "max" });
  await daemon.repo.insert({ id: crypto.randomUUID(), name: "b1", spec, state: "stopped", host: "h", vmgenid: crypto.randomUUID(), generation: 1, owner: "user:root", approver: null, purpose: null, expiresAt: null, labels: {}, lineage: { kind: "image", image: "tiny" }, isTemplate: false, createdBy: "root", createdAt: new Date().toISOString() });
  return daemon;
}

async function request(daemon: Daemon, method: string, path: string): Promise<{ status: number; body: { error?: { code: string; message: string; field?: string } } }> {
  const res = await daemon.app.request(path, { method, headers: { "content-type": "application/json" }, ...(method === "POST" ? { body: "{}" } : {}) }, { transport: "unix" });
  return { status: res.status, body: (await res.json()) as { error?: { code: string; message: string; field?: string } } };
}

test("VIGIL_JAIL=off: a VM with a bridged NIC is refused at start and in showcmd, before anything changes", async (t) => {
  const daemon = await daemonWith(t, { VIGIL_JAIL: "off" });
  const r = await request(daemon, "POST", "/v1/vms/b1/start");
  assert.equal(r.body.error?.field, "nics");
  assert.match(r.body.error?.message ?? "", /Cannot start VM "b1": bridged NICs need the jail \(it opens the tap\), and VIGIL_JAIL=off; its bridged NICs: net1 \(network "lab"\)/);
  assert.equal((await daemon.repo.getByName("b1")).state, "stopped", "the VM never left stopped");
  const cmd = await request(daemon, "GET", "/v1/vms/b1/qemu-command");
  assert.match(cmd.body.error?.message ?? "", /NIC "net1" is on network "lab", and bridged NICs need the jail \(it opens the tap\)/);
});

test("a daemon without a switch refuses a bridged NIC's start, naming it; user NICs need none", async () => {
  const { checkNicsStartable } = await import("./vm-nics.ts");
  const { VmCore } = await import("./vm-core.ts");
  const spec = resolveSpec(createVmRequestSchema.parse({ name: "b2", nics: [{ network: "lab" }] }), { name: "tiny", boot: { kind: "disk" }, disk: undefined }, { cpu: "max" });
  const vm = { id: "id-b2", name: "b2", spec } as Parameters<typeof checkNicsStartable>[1];
  const noSwitch = new VmCore({} as ConstructorParameters<typeof VmCore>[0]);
  assert.throws(() => checkNicsStartable(noSwitch, vm, true), (err: unknown) => err instanceof Error && /Cannot start VM "b2": its NICs net0 \(network "lab"\) are bridged, and this daemon has no virtual switch/.test(err.message));
  const userOnly = { ...vm, spec: { ...spec, nics: [{ name: "net0", mode: "user" as const, restrict: true, mac: "52:54:00:00:00:01" }] } };
  assert.doesNotThrow(() => checkNicsStartable(noSwitch, userOnly, true));
  assert.doesNotThrow(() => checkNicsStartable(noSwitch, userOnly, false));
});
