/**
 * The manager's cluster networks over agents that answer from a table (the agent side is tested for real in
 * src/network/span.test.ts and test/integration/cluster-network.test.ts): every ready host gets the network with
 * one VNI, its own disjoint pool and the others as peers; a host that refuses undoes the hosts already made.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { AuditLog } from "../audit/audit-log.ts";
import { loadOrCreateSiteKey } from "../audit/site-key.ts";
import { Guard, type RequestContext } from "../auth/guard.ts";
import { VigilError } from "../errors.ts";
import { openSqlite } from "../inventory/db.ts";
import { silentLogger } from "../log.ts";
import { ClusterNetworks, nextVni } from "./cluster-networks.ts";

const admin: RequestContext = { actor: { userId: "u1", name: "root", roles: ["admin"], introspect: false, groups: [], via: "unix" }, requestId: "r1" };
const auditor: RequestContext = { actor: { userId: "u2", name: "aud", roles: ["auditor"], introspect: false, groups: [], via: "token" }, requestId: "r2" };

async function fixture(refuse?: string, race?: (db: Awaited<ReturnType<typeof openSqlite>>) => void) {
  const dir = mkdtempSync(join(tmpdir(), "vigil-cnet-"));
  const db = await openSqlite(join(dir, "m.db"));
  const audit = await AuditLog.open(db, loadOrCreateSiteKey(join(dir, "keys")), "manager", join(dir, "keys", "head.json"));
  const calls: { host: string; method: string; path: string; body: unknown }[] = [];
  const onHost = new Map<string, Set<string>>([["h1", new Set()], ["h2", new Set()], ["h3", new Set()]]);
  const addr: Record<string, string> = { h1: "10.251.0.1", h2: "10.251.0.2", h3: "10.251.0.3" };
  const nets = new ClusterNetworks({
    db,
    guard: new Guard(audit),
    log: silentLogger(),
    readyHosts: () => {
      race?.(db);
      return ["h3", "h1", "h2"];
    },
    addressOf: async (h) => addr[h],
    toDelegated: (ctx) => ({ name: ctx.actor.name, roles: ctx.actor.roles, groups: ctx.actor.groups, introspect: false }),
    call: async <T>(host: string, method: string, path: string, body: unknown) => {
      calls.push({ host, method, path, body });
      const name = method === "POST" ? (body as { name: string }).name : path.split("/").pop()!;
      if (method === "GET") return { attached: onHost.get(host)!.has(name) ? [{ vmName: `vm-${host}`, ip: "10.77.0.9" }] : [], dhcpRunning: true } as T;
      if (method === "POST") {
        if (host === refuse) throw new VigilError("VIGIL_CONFLICT", "cidr overlaps", { field: "cidr" });
        onHost.get(host)!.add(name);
      } else if (!onHost.get(host)!.delete(name)) throw new VigilError("VIGIL_NOT_FOUND", "no such network");
      return {} as T;
    },
  });
  return { nets, calls, onHost, db };
}

test("a cluster network is made on every ready host: one VNI, disjoint pools covering the range, the others as peers", async () => {
  const { nets, calls, onHost } = await fixture();
  const made = await nets.create(admin, { name: "lab", cidr: "10.77.0.0/24" });
  assert.equal(made.vni, 1);
  assert.deepEqual(made.hosts.map((h) => [h.host, h.pool.first, h.pool.last]), [["h1", "10.77.0.2", "10.77.0.86"], ["h2", "10.77.0.87", "10.77.0.170"], ["h3", "10.77.0.171", "10.77.0.254"]]);
  assert.deepEqual(calls.map((c) => [c.host, (c.body as { span: { vni: number; peers: string[] } }).span]), [
    ["h1", { vni: 1, peers: ["10.251.0.2", "10.251.0.3"], pool: { first: "10.77.0.2", last: "10.77.0.86" } }],
    ["h2", { vni: 1, peers: ["10.251.0.1", "10.251.0.3"], pool: { first: "10.77.0.87", last: "10.77.0.170" } }],
    ["h3", { vni: 1, peers: ["10.251.0.1", "10.251.0.2"], pool: { first: "10.77.0.171", last: "10.77.0.254" } }],
  ]);
  for (const h of ["h1", "h2", "h3"]) assert.ok(onHost.get(h)!.has("lab"));
  assert.equal((await nets.create(admin, { name: "dmz", cidr: "10.78.0.0/24", dhcp: false })).vni, 2, "the next free VNI");
  await assert.rejects(nets.create(admin, { name: "lab", cidr: "10.79.0.0/24" }), (e: unknown) => e instanceof VigilError && e.field === "name");
  await assert.rejects(nets.create(admin, { name: "x", cidr: "10.79.0.1/24" }), (e: unknown) => e instanceof VigilError && e.field === "cidr");
  await assert.rejects(nets.create(auditor, { name: "y", cidr: "10.80.0.0/24" }), (e: unknown) => e instanceof VigilError && e.code === "VIGIL_FORBIDDEN");
  assert.deepEqual((await nets.listFor(auditor)).map((n) => n.name), ["dmz", "lab"]);
  const shown = await nets.show(auditor, "lab");
  assert.deepEqual([shown.gateway, shown.bridge, shown.nat, shown.dhcpRunning], ["10.77.0.1", "vb-lab", false, true], "the shape of one host's network, for `vigil net`");
  assert.deepEqual(shown.attached, ["h1", "h2", "h3"].map((h) => ({ vmName: `vm-${h}`, ip: "10.77.0.9", host: h })), "each host's NICs, with the host");
  await assert.rejects(nets.show(admin, "nope"), (e: unknown) => e instanceof VigilError && e.code === "VIGIL_NOT_FOUND");
  await assert.rejects(nets.create(admin, { name: "n", cidr: "10.81.0.0/24", nat: true }), (e: unknown) => e instanceof VigilError && e.field === "nat");
  assert.equal((await nets.create(admin, { name: "n", cidr: "10.81.0.0/24", nat: false })).nat, false, "the CLI's nat: false is accepted");
  await nets.delete(admin, "n");
  assert.deepEqual(await nets.delete(admin, "lab"), { deleted: "lab", hosts: ["h1", "h2", "h3"] });
  for (const h of ["h1", "h2", "h3"]) assert.ok(!onHost.get(h)!.has("lab"));
  assert.deepEqual((await nets.list()).map((n) => n.name), ["dmz"]);
  assert.equal(nextVni([1, 2, 4]), 3);
});

test("all or nothing: a host that refuses undoes the hosts already made, and the cluster keeps no record", async () => {
  const { nets, calls, onHost } = await fixture("h2");
  await assert.rejects(nets.create(admin, { name: "lab", cidr: "10.77.0.0/24" }), (e: unknown) => e instanceof VigilError && e.field === "cidr");
  assert.deepEqual(calls.map((c) => `${c.method} ${c.host}`), ["POST h1", "POST h2", "DELETE h1"]);
  for (const h of ["h1", "h2", "h3"]) assert.equal(onHost.get(h)!.size, 0, h);
  assert.deepEqual(await nets.list(), []);
});

test("two managers racing for one VNI: the database's UNIQUE constraint makes the second a conflict, nothing made on any host", async () => {
  let raced = false;
  const { nets, calls } = await fixture(undefined, (db) => {
    if (raced) return;
    raced = true;
    // The other manager commits VNI 1 after this one read the table and before it inserts.
    void db.insertInto("cluster_networks").values({ name: "theirs", cidr: "10.90.0.0/24", dhcp: 1, vni: 1, hosts: "[]", created_by: "x", created_at: "x" }).execute();
  });
  await assert.rejects(nets.create(admin, { name: "lab", cidr: "10.77.0.0/24" }), (e: unknown) => e instanceof VigilError && e.code === "VIGIL_CONFLICT" && /just taken/.test(e.message));
  assert.deepEqual(calls, [], "no host was asked");
  assert.deepEqual((await nets.list()).map((n) => n.name), ["theirs"]);
});
