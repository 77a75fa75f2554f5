/**
 * The switch's tables without a netns: concurrent allocations never share an address and fill the range from
 * the bottom, an address is kept across re-allocation and given up when the NIC moves network, the VM's row
 * takes its addresses along, and "which VMs name this network" reads the specs' nics[].network.
 */
import { test, type TestContext } from "node:test";
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { openSqlite, type Db } from "../inventory/db.ts";
import { NetworkRepository, type NetworkRecord } from "./network-repository.ts";

async function fixture(t: TestContext): Promise<{ db: Db; repo: NetworkRepository; vm: (name: string, spec?: unknown) => Promise<string>; net: (name: string, cidr: string, nat?: boolean) => Promise<NetworkRecord> }> {
  const dir = mkdtempSync(join(tmpdir(), "vigil-netrepo-"));
  const db = await openSqlite(join(dir, "vigil.db"));
  t.after(async () => {
    await db.destroy();
    rmSync(dir, { recursive: true, force: true });
  });
  const repo = new NetworkRepository(db);
  return {
    db,
    repo,
    async vm(name, spec = {}) {
      const id = randomUUID();
      const now = new Date().toISOString();
      await db
        .insertInto("vms")
        .values({ id, name, spec: JSON.stringify(spec), state: "stopped", host: "h", accelerator: null, vmgenid: randomUUID(), generation: 1, pid: null, owner: "user:root", approver: null, purpose: null, expires_at: null, labels: '{"tier":"web"}', lineage: "{}", is_template: 0, created_by: "root", created_at: now, updated_at: now, state_changed_at: now, current_snapshot_id: null, resume_snapshot_id: null, base_vm_id: null, vtime_ns: randomUUID(), security_floor: "{}" })
        .execute();
      return id;
    },
    async net(name, cidr, nat = false) {
      const n: NetworkRecord = { id: randomUUID(), name, cidr, gateway: cidr.replace(/\.0\/\d+$/, ".1"), bridge: `vb-${name}`, dhcp: true, nat, createdAt: new Date().toISOString() };
      await repo.insert(n);
      return n;
    },
  };
}

test("concurrent allocations get distinct addresses, lowest first; a full range is refused", async (t) => {
  const f = await fixture(t);
  const n = await f.net("p1", "10.50.0.0/27"); // 29 assignable: .2-.30
  const vm = await f.vm("many");
  const ips = await Promise.all(Array.from({ length: 29 }, (_, i) => f.repo.allocate(n, vm, `net${i}`, `52:54:00:00:00:${i.toString(16).padStart(2, "0")}`)));
  assert.equal(new Set(ips).size, 29);
  assert.deepEqual([...ips].sort((a, b) => Number(a.split(".")[3]) - Number(b.split(".")[3])), Array.from({ length: 29 }, (_, i) => `10.50.0.${i + 2}`));
  await assert.rejects(f.repo.allocate(n, vm, "net99", "52:54:00:00:01:00"), /all 29 addresses/);
});

test("an address is kept, updated with the MAC, given up on a move, and freed with the VM row", async (t) => {
  const f = await fixture(t);
  const a = await f.net("a", "10.51.0.0/24");
  const b = await f.net("b", "10.52.0.0/24");
  const vm1 = await f.vm("web1");
  const vm2 = await f.vm("web2");
  assert.equal(await f.repo.allocate(a, vm1, "net0", "52:54:00:00:00:01"), "10.51.0.2");
  assert.equal(await f.repo.allocate(a, vm2, "net0", "52:54:00:00:00:02"), "10.51.0.3");
  assert.equal(await f.repo.allocate(a, vm1, "net0", "52:54:00:00:00:09"), "10.51.0.2", "same NIC, same address");
  assert.deepEqual((await f.repo.addresses(a.id)).map((x) => [x.vmName, x.ip, x.mac, x.labels.tier]), [["web1", "10.51.0.2", "52:54:00:00:00:09", "web"], ["web2", "10.51.0.3", "52:54:00:00:00:02", "web"]]);
  assert.equal(await f.repo.allocate(b, vm1, "net0", "52:54:00:00:00:09"), "10.52.0.2", "moved to network b");
  assert.deepEqual((await f.repo.addresses(a.id)).map((x) => x.vmName), ["web2"], "its address on a is free again");
  await f.db.deleteFrom("vms").where("id", "=", vm2).execute();
  assert.deepEqual(await f.repo.addresses(a.id), [], "the VM row takes its addresses along");
  await f.repo.delete(b.id);
  assert.deepEqual(await f.repo.addresses(), []);
  assert.deepEqual((await f.repo.list()).map((n) => n.name), ["a"]);
});

test("vmsNaming finds the VMs whose spec has a NIC on the network", async (t) => {
  const f = await fixture(t);
  await f.vm("one", { nics: [{ restrict: true }, { mode: "bridge", network: "lab" }] });
  await f.vm("two", { nics: [{ mode: "bridge", network: "other" }] });
  await f.vm("three", { nics: [{ mode: "bridge", network: "lab" }] });
  await f.vm("four", {});
  assert.deepEqual(await f.repo.vmsNaming("lab"), ["one", "three"]);
  assert.deepEqual(await f.repo.vmsNaming("none"), []);
});

test("a network's nat flag is stored and read back (migration 0005-network-nat; default off)", async (t) => {
  const f = await fixture(t);
  await f.net("out", "10.53.0.0/24", true);
  await f.net("in", "10.54.0.0/24");
  assert.deepEqual((await f.repo.list()).map((n) => [n.name, n.nat]), [["in", false], ["out", true]]);
  assert.equal((await f.repo.find("out"))?.nat, true);
});
