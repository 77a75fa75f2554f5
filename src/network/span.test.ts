/**
 * A network spanning two hosts, for real but without VMs: two "hosts" (netns of the test's own on an underlay
 * bridge in a third), each with its own switch (its own vigil netns, database and NetworkService) and a client
 * netns plugged into its bridge. The VXLAN device is made where the underlay address is, moved into vigil's
 * netns with one all-zeros FDB entry per peer, and the two bridges are one L2 segment. All namespaces are the
 * test's and deleted in `after`.
 */
import { test, type TestContext } from "node:test";
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdirSync, mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { AuditLog } from "../audit/audit-log.ts";
import { loadOrCreateSiteKey } from "../audit/site-key.ts";
import { Guard, type RequestContext } from "../auth/guard.ts";
import { VigilError } from "../errors.ts";
import { openSqlite } from "../inventory/db.ts";
import { silentLogger } from "../log.ts";
import { hostNetns } from "./netns.ts";
import { NetworkService } from "./network-service.ts";

const admin: RequestContext = { actor: { userId: "u1", name: "root", roles: ["admin"], introspect: false, groups: [], via: "unix" }, requestId: "r1" };
const sh = (...args: string[]) => execFileSync("ip", args, { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
const links = (ns: string) => JSON.parse(sh("-n", ns, "-d", "-j", "link", "show")) as Array<{ ifname: string; master?: string; flags: string[]; mtu: number; linkinfo?: { info_kind?: string; info_data?: { id?: number; local?: string; port?: number; learning?: boolean } } }>;
const ping = (ns: string, addr: string) => spawnSync("ip", ["netns", "exec", ns, "busybox", "ping", "-c", "1", "-W", "2", addr], { encoding: "utf8" }).status === 0;

async function twoHosts(t: TestContext) {
  const tag = randomBytes(3).toString("hex");
  const made: string[] = [];
  t.after(() => {
    for (const ns of made.reverse()) spawnSync("ip", ["netns", "delete", ns]);
  });
  const netns = (name: string) => {
    const ns = `vt-${name}-${tag}`;
    sh("netns", "add", ns);
    made.push(ns);
    sh("-n", ns, "link", "set", "lo", "up");
    return ns;
  };
  const underlay = netns("spu");
  sh("-n", underlay, "link", "add", "br0", "type", "bridge");
  sh("-n", underlay, "link", "set", "br0", "up");
  const hosts = [];
  for (const i of [1, 2]) {
    const host = netns(`sph${i}`);
    sh("-n", underlay, "link", "add", `p${i}`, "type", "veth", "peer", "name", "eth0", "netns", host);
    sh("-n", underlay, "link", "set", `p${i}`, "master", "br0", "up");
    sh("-n", host, "addr", "add", `10.252.0.${i}/24`, "dev", "eth0");
    sh("-n", host, "link", "set", "eth0", "up");
    const vigil = `vt-spv${i}-${tag}`;
    made.push(vigil);
    const dir = mkdtempSync(join(tmpdir(), "vigil-span-"));
    const db = await openSqlite(join(dir, "vigil.db"));
    const audit = await AuditLog.open(db, loadOrCreateSiteKey(join(dir, "keys")), `h${i}`, join(dir, "keys", "head.json"));
    mkdirSync(join(dir, "run"), { mode: 0o700 });
    const net = new NetworkService({ db, guard: new Guard(audit), audit, netns: hostNetns(vigil), runDir: join(dir, "run"), log: silentLogger(), hostName: `h${i}`, underlay: `10.252.0.${i}`, underlayNetns: hostNetns(host) });
    hosts.push({ host, vigil, net, addr: `10.252.0.${i}` });
  }
  /** A client netns with a veth into `bridge` of `vigil`, holding `addr`/24. */
  const client = (vigil: string, bridge: string, addr: string) => {
    const c = netns(`spc${made.length}`);
    const port = `vc${made.length}${tag}`.slice(0, 15);
    sh("-n", vigil, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", c);
    sh("-n", vigil, "link", "set", port, "master", bridge, "up");
    sh("-n", c, "addr", "add", `${addr}/24`, "dev", "eth0");
    sh("-n", c, "link", "set", "eth0", "up");
    return c;
  };
  return { hosts: hosts as [(typeof hosts)[0], (typeof hosts)[0]], client };
}

test("a spanned network is one L2 segment across two hosts; its VXLAN device is made right, re-made by reconcile, removed with the network", { timeout: 60_000 }, async (t) => {
  const { hosts, client } = await twoHosts(t);
  const [h1, h2] = hosts;
  const pools = [{ first: "10.77.0.2", last: "10.77.0.127" }, { first: "10.77.0.128", last: "10.77.0.254" }];
  for (const [i, h] of hosts.entries()) {
    const other = hosts[1 - i]!;
    const made = await h.net.create(admin, { name: "lab", cidr: "10.77.0.0/24", dhcp: false, span: { vni: 4242, peers: [other.addr], pool: pools[i] } }, { cluster: true });
    assert.deepEqual(made.span, { vni: 4242, peers: [other.addr], pool: pools[i], device: "vx-lab" });
  }
  for (const h of hosts) {
    const vx = links(h.vigil).find((l) => l.ifname === "vx-lab");
    assert.ok(vx, `vx-lab in ${h.vigil}`);
    assert.equal(vx.master, "vb-lab");
    assert.ok(vx.flags.includes("UP"));
    assert.equal(vx.mtu, 1500);
    assert.equal(vx.linkinfo?.info_kind, "vxlan");
    assert.equal(vx.linkinfo?.info_data?.id, 4242);
    assert.equal(vx.linkinfo?.info_data?.local, h.addr);
    assert.equal(vx.linkinfo?.info_data?.port, 4789);
    assert.equal(vx.linkinfo?.info_data?.learning, false);
    assert.ok(!links(h.host).some((l) => l.ifname === "vx-lab"), "nothing left where it was made");
  }
  const c1 = client(h1.vigil, "vb-lab", "10.77.0.2");
  client(h2.vigil, "vb-lab", "10.77.0.128");
  assert.ok(ping(c1, "10.77.0.128"), "a client on h1 reaches one on h2: one segment");
  assert.ok(ping(c1, "10.77.0.1"), "and its own host's gateway");

  // Reconcile (daemon start) re-makes a device someone removed, with its peer.
  sh("-n", h2.vigil, "link", "delete", "vx-lab");
  assert.ok(!ping(c1, "10.77.0.128"), "without h2's VXLAN device the segment is cut");
  await h2.net.reconcile();
  const fdb = JSON.parse(execFileSync("ip", ["netns", "exec", h2.vigil, "bridge", "-j", "fdb", "show", "dev", "vx-lab"], { encoding: "utf8" })) as Array<{ mac: string; dst?: string }>;
  assert.deepEqual(fdb.filter((e) => e.mac === "00:00:00:00:00:00").map((e) => e.dst), [h1.addr]);
  assert.ok(ping(c1, "10.77.0.128"), "reconcile restored the segment");

  // The same home started without a cluster address (`vigil serve`): reconcile does not fail, the network stays
  // local-only; the agent's next start makes the device again.
  const lone = new NetworkService({ ...(h2.net as unknown as { d: ConstructorParameters<typeof NetworkService>[0] }).d, underlay: undefined });
  sh("-n", h2.vigil, "link", "delete", "vx-lab");
  await lone.reconcile();
  assert.deepEqual(links(h2.vigil).filter((l) => l.ifname.startsWith("v")).map((l) => l.ifname).sort().filter((n) => !n.startsWith("vc")), ["vb-lab"], "the bridge is back, no VXLAN device");
  await h2.net.reconcile();
  assert.ok(ping(c1, "10.77.0.128"), "the agent's reconcile made it again");

  await h1.net.delete(admin, "lab");
  assert.ok(!sh("netns", "list").includes(h1.vigil), "the last network took vigil's netns (and the VXLAN device) along");
  assert.ok(!links(h1.host).some((l) => l.ifname === "vx-lab"));
});

test("span is refused outside the cluster transport, and bad span values name their field; a failed create leaves nothing", { timeout: 60_000 }, async (t) => {
  const { hosts } = await twoHosts(t);
  const [h1, h2] = hosts;
  const good = { name: "lab", cidr: "10.77.0.0/24", span: { vni: 7, peers: [h2.addr], pool: { first: "10.77.0.2", last: "10.77.0.100" } } };
  await assert.rejects(h1.net.create(admin, good), (e: unknown) => e instanceof VigilError && e.code === "VIGIL_FORBIDDEN" && e.field === "span");
  const bad: Array<[unknown, string]> = [
    [{ ...good, span: { ...good.span, vni: 0 } }, "span.vni"],
    [{ ...good, span: { ...good.span, vni: 16_777_216 } }, "span.vni"],
    [{ ...good, span: { ...good.span, peers: ["10.252.0.300"] } }, "span.peers.0"],
    [{ ...good, span: { ...good.span, peers: [h1.addr] } }, "span.peers.0"],
    [{ ...good, span: { ...good.span, pool: { first: "10.77.0.1", last: "10.77.0.9" } } }, "span.pool"],
    [{ ...good, nat: true }, "nat"],
  ];
  for (const [input, field] of bad) {
    await assert.rejects(h1.net.create(admin, input, { cluster: true }), (e: unknown) => e instanceof VigilError && e.field === field, `${JSON.stringify(input)} → ${field}`);
  }
  // No underlay address (a plain `vigil serve`): refused, and nothing was made.
  const lone = new NetworkService({ ...(h1.net as unknown as { d: ConstructorParameters<typeof NetworkService>[0] }).d, underlay: undefined });
  await assert.rejects(lone.create(admin, good, { cluster: true }), (e: unknown) => e instanceof VigilError && e.field === "span");
  assert.deepEqual(await h1.net.networks(), []);
  assert.ok(!sh("netns", "list").includes(h1.vigil), "no netns, bridge or VXLAN device left behind");
});
