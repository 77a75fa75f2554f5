/**
 * Starting a VM with an open NIC needs the loopback guard (host/loopback-guard.ts): without nft the start is
 * refused before anything changes, naming the NIC; a VM whose NICs are all restricted is not affected.
 */
import { test, type TestContext } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startDaemon, type Daemon } from "../daemon/daemon.ts";
import { silentLogger } from "../log.ts";
import { createVmRequestSchema, resolveSpec } from "./spec.ts";

async function daemonWithoutNft(t: TestContext): Promise<Daemon> {
  const old = process.env.VIGIL_NFT;
  process.env.VIGIL_NFT = "/nonexistent/nft";
  const home = mkdtempSync(join(tmpdir(), "vigil-nic-"));
  const daemon = await startDaemon({ home, cache: join(home, "no-cache"), listen: "none", log: silentLogger() });
  t.after(async () => {
    await daemon.close();
    rmSync(home, { recursive: true, force: true });
    if (old === undefined) delete process.env.VIGIL_NFT;
    else process.env.VIGIL_NFT = old;
  });
  for (const [name, restrict] of [["open", false], ["closed", true]] as const) {
    const spec = resolveSpec(createVmRequestSchema.parse({ name, memoryMiB: 128, nics: [{ restrict }] }), { name: "tiny", boot: { kind: "kernel", kernel: "/nonexistent/k", initrd: "/nonexistent/i", cmdline: "" }, disk: "/d" }, { cpu: "max" });
    await daemon.repo.insert({ id: crypto.randomUUID(), name, spec, state: "stopped", host: "h", vmgenid: crypto.randomUUID(), generation: 1, owner: "user:root", approver: null, purpose: null, expiresAt: null, labels: {}, lineage: { kind: "image", image: "tiny" }, isTemplate: false, createdBy: "root", createdAt: new Date().toISOString() });
  }
  return daemon;
}

async function start(daemon: Daemon, name: string): Promise<{ status: number; error: { code: string; message: string; field?: string } }> {
  const res = await daemon.app.request(`/v1/vms/${name}/start`, { method: "POST", headers: { "content-type": "application/json" }, body: "{}" }, { transport: "unix" });
  return { status: res.status, error: ((await res.json()) as { error: { code: string; message: string; field?: string } }).error };
}

test("without nft a VM with an open NIC is refused at start, before anything changes; restricted NICs are unaffected", async (t) => {
  const daemon = await daemonWithoutNft(t);
  const open = await start(daemon, "open");
  assert.equal(open.error.code, "VIGIL_HOST");
  assert.equal(open.error.field, "nics");
  assert.match(open.error.message, /Cannot start VM "open": its open NIC net0 needs the host loopback guard \(nftables\), which cannot be installed: \/nonexistent\/nft is not installed/);
  assert.equal((await daemon.repo.getByName("open")).state, "stopped", "the VM never left stopped");
  const closed = await start(daemon, "closed");
  assert.doesNotMatch(closed.error?.message ?? "", /loopback guard/, "a restricted NIC needs no guard (this start fails later, on its missing kernel)");
});
