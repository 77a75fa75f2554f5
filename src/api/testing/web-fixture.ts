/**
 * A daemon without QEMU for the web console's server tests (sessions, static files, metrics, the console socket):
 * users of each role with a token, and VMs inserted straight into the inventory (no process behind them).
 */
import type { TestContext } from "node:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startDaemon, type Daemon } from "../../daemon/daemon.ts";
import { silentLogger } from "../../log.ts";
import type { Role } from "../../auth/permissions.ts";
import { createVmRequestSchema, resolveSpec } from "../../vm/spec.ts";
import type { VmState } from "../../vm/state-machine.ts";

export interface WebFixture {
  daemon: Daemon;
  /** Bearer tokens by user name: admin, operator, bob and carol (owners), auditor, nobody (no roles). */
  tokens: Record<"admin" | "operator" | "bob" | "carol" | "auditor" | "nobody", string>;
  /** Inserts a VM record (no QEMU) and returns its id. */
  addVm(name: string, owner: string, state?: VmState, memoryMiB?: number): Promise<string>;
}

export async function webFixture(t: TestContext, options: { listen?: string } = {}): Promise<WebFixture> {
  const home = mkdtempSync(join(tmpdir(), "vigil-web-"));
  const daemon = await startDaemon({ home, cache: join(home, "no-cache"), listen: options.listen ?? "none", log: silentLogger() });
  t.after(async () => {
    await daemon.close();
    rmSync(home, { recursive: true, force: true });
  });
  const roles: Record<keyof WebFixture["tokens"], Role[]> = { admin: ["admin"], operator: ["operator"], bob: ["owner"], carol: ["owner"], auditor: ["auditor"], nobody: [] };
  const tokens = {} as WebFixture["tokens"];
  for (const [name, r] of Object.entries(roles) as Array<[keyof WebFixture["tokens"], Role[]]>) {
    await daemon.deps.users.create({ name, roles: r, introspect: false }, "test");
    tokens[name] = (await daemon.deps.users.issueToken(name, "t")).token;
  }
  const addVm = async (name: string, owner: string, state: VmState = "stopped", memoryMiB = 256): Promise<string> => {
    const req = createVmRequestSchema.parse({ name, memoryMiB });
    const spec = resolveSpec(req, { name: "tiny", boot: { kind: "kernel", kernel: "/k", initrd: "/i", cmdline: "" }, disk: "/d" }, { cpu: "max" });
    const vm = await daemon.repo.insert({ id: crypto.randomUUID(), name, spec, state, host: daemon.deps.host.name, vmgenid: crypto.randomUUID(), generation: 1, owner, approver: null, purpose: null, expiresAt: null, labels: {}, lineage: { kind: "image", image: "tiny" }, isTemplate: false, createdBy: "test", createdAt: new Date().toISOString() });
    return vm.id;
  };
  return { daemon, tokens, addVm };
}
