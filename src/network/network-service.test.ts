/**
 * The switch for real, without VMs: a netns of the test's own (VIGIL_NETNS-style name "vt-sw-…", deleted in
 * `after`), bridges, taps and dnsmasq in it, and a client netns (also the test's) with a veth into the bridge that
 * asks for an address with busybox udhcpc under a NIC's MAC. All traffic stays inside those two namespaces.
 */
import { test, type TestContext } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { randomBytes, randomUUID } from "node:crypto";
import { chmodSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { AuditLog } from "../audit/audit-log.ts";
import { loadOrCreateSiteKey } from "../audit/site-key.ts";
import { Guard, type RequestContext } from "../auth/guard.ts";
import { VigilError } from "../errors.ts";
import { openSqlite, type Db } from "../inventory/db.ts";
import { silentLogger } from "../log.ts";
import { hostNetns } from "./netns.ts";
import { NetworkService } from "./network-service.ts";
import { tapName } from "./bridge.ts";
import { startDaemon } from "../daemon/daemon.ts";

const admin: RequestContext = { actor: { userId: "u1", name: "root", roles: ["admin"], introspect: false, groups: [], via: "unix" }, requestId: "r1" };
const auditor: RequestContext = { actor: { userId: "u2", name: "aud", roles: ["auditor"], introspect: false, groups: [], via: "token" }, requestId: "r2" };

const sh = (cmd: string, args: string[]) => execFileSync(cmd, args, { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
const netnsList = () => sh("ip", ["netns", "list"]);
const links = (ns: string) => JSON.parse(sh("ip", ["-n", ns, "-d", "-j", "link", "show"])) as Array<{ ifname: string; master?: string; flags: string[]; linkinfo?: { info_kind?: string; info_data?: { user?: number; group?: number } } }>;

interface Fixture {
  db: Db;
  dir: string;
  ns: string;
  net: NetworkService;
  changes: () => number;
  /** A client netns of the test's own with a veth plugged into `bridge`. */
  client(bridge: string): string;
  /** Asks for a lease from the client netns with `mac`; the leased IP, or undefined when none came. */
  dhcp(client: string, mac: string): string | undefined;
  vm(name: string, state?: string, spec?: unknown): Promise<string>;
}

function dnsmasqPids(dir: string): number[] {
  const pids: number[] = [];
  for (const p of readdirSync("/proc")) {
    if (!/^\d+$/.test(p)) continue;
    try {
      const cmd = readFileSync(`/proc/${p}/cmdline`, "utf8");
      if (cmd.startsWith("dnsmasq") && cmd.includes(dir)) pids.push(Number(p));
    } catch {
      // gone
    }
  }
  return pids;
}

async function fixture(t: TestContext): Promise<Fixture> {
  const dir = mkdtempSync(join(tmpdir(), "vigil-switch-"));
  const db = await openSqlite(join(dir, "vigil.db"));
  const audit = await AuditLog.open(db, loadOrCreateSiteKey(join(dir, "keys")), "h", join(dir, "keys", "head.json"));
  const tag = randomBytes(4).toString("hex");
  const ns = `vt-sw-${tag}`;
  const runDir = join(dir, "run");
  mkdirSync(runDir, { mode: 0o700 });
  const net = new NetworkService({ db, guard: new Guard(audit), audit, netns: hostNetns(ns), runDir, log: silentLogger(), hostName: "h" });
  let changes = 0;
  net.onChange(async () => {
    changes++;
  });
  const clients: string[] = [];
  t.after(async () => {
    for (const pid of dnsmasqPids(dir)) process.kill(pid, "SIGKILL");
    for (const c of [...clients, ns]) {
      try {
        sh("ip", ["netns", "delete", c]);
      } catch {
        // not there
      }
    }
    await audit.close();
    await db.destroy();
    rmSync(dir, { recursive: true, force: true });
  });
  const script = join(dir, "udhcpc.sh");
  writeFileSync(script, '#!/bin/sh\n[ "$1" = bound ] && echo "IP=$ip"\nexit 0\n');
  chmodSync(script, 0o755);
  return {
    db,
    dir,
    ns,
    net,
    changes: () => changes,
    client(bridge) {
      const c = `vt-swc-${tag}-${clients.length}`;
      const port = `vc${clients.length}-${tag}`;
      sh("ip", ["netns", "add", c]);
      clients.push(c);
      sh("ip", ["link", "add", port, "netns", ns, "type", "veth", "peer", "name", "eth0", "netns", c]);
      sh("ip", ["-n", ns, "link", "set", port, "master", bridge, "up"]);
      sh("ip", ["-n", c, "link", "set", "lo", "up"]);
      return c;
    },
    dhcp(client, mac) {
      sh("ip", ["-n", client, "link", "set", "eth0", "down"]);
      sh("ip", ["-n", client, "link", "set", "eth0", "address", mac, "up"]);
      try {
        const out = sh("ip", ["netns", "exec", client, "busybox", "udhcpc", "-i", "eth0", "-n", "-q", "-t", "3", "-T", "1", "-s", script]);
        return /IP=(\S+)/.exec(out)?.[1];
      } catch {
        return undefined;
      }
    },
    async vm(name, state = "running", spec = { nics: [] }) {
      const id = randomUUID();
      const now = new Date().toISOString();
      await db
        .insertInto("vms")
        .values({ id, name, spec: JSON.stringify(spec), state, host: "h", accelerator: null, vmgenid: randomUUID(), generation: 1, pid: null, owner: "user:root", approver: null, purpose: null, expires_at: null, labels: JSON.stringify({ app: name }), lineage: "{}", is_template: 0, created_by: "root", created_at: now, updated_at: now, state_changed_at: now, current_snapshot_id: null, resume_snapshot_id: null, base_vm_id: null, vtime_ns: randomUUID(), security_floor: "{}" })
        .execute();
      return id;
    },
  };
}

test("a network's bridge, a NIC's tap and its DHCP lease, for real; detach and delete leave nothing", async (t) => {
  const f = await fixture(t);
  const created = await f.net.create(admin, { name: "t1", cidr: "10.201.0.0/24" });
  assert.deepEqual({ ...created, createdAt: "" }, { name: "t1", cidr: "10.201.0.0/24", gateway: "10.201.0.1", bridge: "vb-t1", dhcp: true, nat: false, createdAt: "" });
  assert.match(netnsList(), new RegExp(`^${f.ns}\\b`, "m"));
  const addr = JSON.parse(sh("ip", ["-n", f.ns, "-j", "addr", "show", "dev", "vb-t1"])) as Array<{ addr_info: Array<{ family: string; local: string; prefixlen: number }> }>;
  assert.deepEqual(addr[0]!.addr_info.map((a) => `${a.family} ${a.local}/${a.prefixlen}`), ["inet 10.201.0.1/24"], "the gateway address, and no IPv6 on the bridge");
  assert.equal(sh("nsenter", [`--net=/run/netns/${f.ns}`, "--", "sysctl", "-n", "net.ipv4.ip_forward"]).trim(), "0");

  const id1 = await f.vm("web1");
  const id2 = await f.vm("web2");
  const plug = (id: string, name: string, uid: number) => ({ id, name, labels: { app: name }, uid, gid: uid });
  const before = f.changes();
  const a1 = await f.net.attach(plug(id1, "web1", 64101), { name: "net0", network: "t1", mac: "52:54:00:AA:00:01" });
  assert.equal(f.changes(), before + 1, "listeners ran before attach resolved");
  assert.equal(a1.ip, "10.201.0.2");
  assert.equal(a1.tap, tapName(id1, "net0"));
  assert.match(a1.tap, /^vt-[0-9a-f]{10}$/);
  assert.equal(a1.mac, "52:54:00:aa:00:01");
  assert.equal(a1.netnsPath, `/run/netns/${f.ns}`);
  const a2 = await f.net.attach(plug(id2, "web2", 64102), { name: "net0", network: "t1", mac: "52:54:00:aa:00:02" });
  assert.equal(a2.ip, "10.201.0.3", "the lowest free address");
  const tap = links(f.ns).find((l) => l.ifname === a1.tap);
  assert.ok(tap, "the tap exists in the netns");
  assert.equal(tap.master, "vb-t1");
  assert.equal(tap.linkinfo?.info_kind, "tun");
  assert.equal(tap.linkinfo?.info_data?.user, 64101);
  assert.equal(tap.linkinfo?.info_data?.group, 64101);
  const v6 = (dev: string) => sh("nsenter", [`--net=/run/netns/${f.ns}`, "--", "sysctl", "-n", `net.ipv6.conf.${dev}.disable_ipv6`]).trim();
  assert.deepEqual([v6(a1.tap), v6("vb-t1")], ["1", "1"], "no IPv6 on taps and bridges");
  const again = await f.net.attach(plug(id1, "web1", 64101), { name: "net0", network: "t1", mac: "52:54:00:aa:00:01" });
  assert.equal(again.ip, "10.201.0.2", "attach is idempotent and keeps the address");
  assert.deepEqual((await f.net.attached()).map((n) => [n.vmName, n.ip, n.tap, n.labels.app]).sort(), [["web1", "10.201.0.2", a1.tap, "web1"], ["web2", "10.201.0.3", a2.tap, "web2"]]);

  const client = f.client("vb-t1");
  assert.equal(f.dhcp(client, "52:54:00:aa:00:01"), "10.201.0.2", "the NIC's MAC gets exactly its address");
  assert.equal(f.dhcp(client, "52:54:00:aa:00:02"), "10.201.0.3");
  assert.equal(f.dhcp(client, "52:54:00:aa:00:77"), undefined, "an unknown MAC gets nothing");

  await f.net.detach(id1, "net0");
  assert.ok(!links(f.ns).some((l) => l.ifname === a1.tap), "detach removes the tap");
  assert.equal(f.dhcp(client, "52:54:00:aa:00:01"), undefined, "and its lease");
  await f.net.detach(id1, "net0");

  const shown = await f.net.get(auditor, "t1");
  assert.deepEqual(shown.attached.map((n) => n.vmName), ["web2"]);
  assert.equal(shown.dhcpRunning, true);
  await assert.rejects(f.net.create(auditor, { name: "t9", cidr: "10.209.0.0/24" }), (e: VigilError) => e.code === "VIGIL_FORBIDDEN");

  // Refused while a VM's spec names the network.
  await f.db.updateTable("vms").set({ spec: JSON.stringify({ nics: [{ mode: "bridge", network: "t1" }] }) }).where("id", "=", id2).execute();
  await assert.rejects(f.net.delete(admin, "t1"), (e: VigilError) => e.code === "VIGIL_CONFLICT" && /web2/.test(e.message));
  await f.db.updateTable("vms").set({ spec: "{}" }).where("id", "=", id2).execute();

  assert.equal(dnsmasqPids(f.dir).length, 1);
  await f.net.delete(admin, "t1");
  assert.equal(dnsmasqPids(f.dir).length, 0, "no dnsmasq left");
  assert.doesNotMatch(netnsList(), new RegExp(`^${f.ns}\\b`, "m"), "the last network takes the netns along");
  assert.deepEqual(await f.net.networks(), []);
  assert.deepEqual(await f.net.repo.addresses(), []);
});

test("a failed create leaves nothing: bad name, too small, overlapping, dnsmasq failing", async (t) => {
  const f = await fixture(t);
  const refused = async (input: unknown, field: string, pattern: RegExp) => {
    await assert.rejects(f.net.create(admin, input), (e: VigilError) => {
      assert.equal(e.field, field, e.message);
      assert.match(e.message, pattern);
      return true;
    });
  };
  await refused({ name: "Bad_Name", cidr: "10.1.0.0/24" }, "name", /Invalid network name/);
  await refused({ name: "waytoolongname", cidr: "10.1.0.0/24" }, "name", /1-12/);
  await refused({ name: "n1", cidr: "10.1.0.0/30" }, "cidr", /\/16 to \/29/);
  await refused({ name: "n1", cidr: "10.1.0.1/24" }, "cidr", /host bits/);
  await refused({ name: "n1", cidr: "10.1.0.0/24", extra: 1 }, "extra", /unknown field/);
  assert.doesNotMatch(netnsList(), new RegExp(`^${f.ns}\\b`, "m"), "validation failures create no netns");

  // dnsmasq cannot write its pid file (a directory is in the way): the create fails and undoes everything.
  mkdirSync(join(f.dir, "run", "dhcp", "n1", "dnsmasq.pid"), { recursive: true });
  await assert.rejects(f.net.create(admin, { name: "n1", cidr: "10.1.0.0/24" }), (e: VigilError) => e.code === "VIGIL_HOST" && /dnsmasq/.test(e.message));
  assert.doesNotMatch(netnsList(), new RegExp(`^${f.ns}\\b`, "m"), "no netns, so no bridge");
  assert.deepEqual(await f.net.networks(), []);
  assert.equal(dnsmasqPids(f.dir).length, 0);

  await f.net.create(admin, { name: "n1", cidr: "10.1.0.0/24", dhcp: false });
  await refused({ name: "n2", cidr: "10.1.0.128/25" }, "cidr", /overlaps network "n1" \(10\.1\.0\.0\/24\)/);
  await refused({ name: "n2", cidr: "10.1.0.0/16" }, "cidr", /overlaps network "n1"/);
  await refused({ name: "n1", cidr: "10.2.0.0/24" }, "name", /exists/);
  assert.deepEqual(links(f.ns).map((l) => l.ifname).sort(), ["lo", "vb-n1"], "only the first network's bridge");
  assert.equal(dnsmasqPids(f.dir).length, 0, "no DHCP: no dnsmasq");
  await f.net.delete(admin, "n1");
  assert.doesNotMatch(netnsList(), new RegExp(`^${f.ns}\\b`, "m"));
});

test("addresses live as long as the VM row; reconcile removes taps of VMs that are not running and restarts dnsmasq", async (t) => {
  const f = await fixture(t);
  await f.net.create(admin, { name: "r1", cidr: "10.202.0.0/29" });
  const run = await f.vm("run1", "running");
  const gone = await f.vm("gone1", "stopped");
  const plug = (id: string, name: string) => ({ id, name, labels: {}, uid: 64200, gid: 64200 });
  const ips: string[] = [];
  for (const [id, name] of [[run, "run1"], [gone, "gone1"]] as const) ips.push((await f.net.attach(plug(id, name), { name: "net0", network: "r1", mac: `52:54:00:bb:00:0${ips.length + 1}` })).ip);
  assert.deepEqual(ips, ["10.202.0.2", "10.202.0.3"]);
  // A /29 has 5 assignable addresses: .2-.6.
  const more = [];
  for (let i = 0; i < 3; i++) more.push((await f.net.attach(plug(run, "run1"), { name: `net${i + 1}`, network: "r1", mac: `52:54:00:bb:01:0${i}` })).ip);
  assert.deepEqual(more, ["10.202.0.4", "10.202.0.5", "10.202.0.6"]);
  await assert.rejects(f.net.attach(plug(run, "run1"), { name: "net9", network: "r1", mac: "52:54:00:bb:02:00" }), /all 5 addresses of 10\.202\.0\.0\/29 are in use/);
  assert.ok(!links(f.ns).some((l) => l.ifname === tapName(run, "net9")), "a failed allocation creates no tap");
  await assert.rejects(f.net.attach(plug(run, "run1"), { name: "net9", network: "nope", mac: "52:54:00:bb:02:00" }), (e: VigilError) => e.field === "network");

  // dnsmasq died; the stopped VM's tap is a leftover.
  for (const pid of dnsmasqPids(f.dir)) process.kill(pid, "SIGKILL");
  await new Promise((r) => setTimeout(r, 100));
  const result = await f.net.reconcile();
  assert.deepEqual(result.tapsRemoved, [tapName(gone, "net0")]);
  assert.deepEqual(result.dhcpRestarted, ["r1"]);
  assert.equal(dnsmasqPids(f.dir).length, 1);
  const names = links(f.ns).map((l) => l.ifname);
  assert.ok(names.includes(tapName(run, "net0")) && !names.includes(tapName(gone, "net0")));
  const client = f.client("vb-r1");
  assert.equal(f.dhcp(client, "52:54:00:bb:00:01"), "10.202.0.2", "the restarted dnsmasq serves the running VM's lease");

  // Deleting the VM row frees its addresses; the lowest is handed out again.
  await f.db.deleteFrom("vms").where("id", "=", gone).execute();
  const next = await f.vm("new1");
  assert.equal((await f.net.attach(plug(next, "new1"), { name: "net0", network: "r1", mac: "52:54:00:bb:00:09" })).ip, "10.202.0.3");
  for (const [i] of [0, 1, 2].entries()) await f.net.detach(run, `net${i + 1}`);
  await f.net.detach(run, "net0");
  await f.net.detach(next, "net0");
  await f.net.delete(admin, "r1");
  assert.doesNotMatch(netnsList(), new RegExp(`^${f.ns}\\b`, "m"));
});

test("attach rebuilds a netns deleted behind vigil's back, and is audited; detach too", async (t) => {
  const f = await fixture(t);
  await f.net.create(admin, { name: "a1", cidr: "10.207.0.0/24" });
  for (const pid of dnsmasqPids(f.dir)) process.kill(pid, "SIGKILL");
  sh("ip", ["netns", "delete", f.ns]);
  const id = await f.vm("web1");
  const nic = await f.net.attach({ id, name: "web1", labels: {}, uid: 64400, gid: 64400 }, { name: "net0", network: "a1", mac: "52:54:00:dd:00:01" });
  assert.equal(links(f.ns).find((l) => l.ifname === nic.tap)?.master, "vb-a1", "netns, bridge and tap are back");
  assert.equal(dnsmasqPids(f.dir).length, 1, "and the network's dnsmasq");
  const client = f.client("vb-a1");
  assert.equal(f.dhcp(client, "52:54:00:dd:00:01"), "10.207.0.2");
  await f.net.detach(id, "net0");
  const actions = (await f.db.selectFrom("audit_log").select(["action", "details"]).execute()).map((r) => r.action);
  assert.deepEqual(actions.filter((a) => a.startsWith("net.")), ["net.create", "net.attach", "net.detach"]);
  await f.net.delete(admin, "a1");
});

test("daemon start brings the switch back: netns, bridge and dnsmasq of every network", async (t) => {
  const home = mkdtempSync(join(tmpdir(), "vigil-switchd-"));
  const ns = `vt-swd-${randomBytes(4).toString("hex")}`;
  process.env.VIGIL_NETNS = ns;
  t.after(() => {
    delete process.env.VIGIL_NETNS;
    for (const pid of dnsmasqPids(home)) process.kill(pid, "SIGKILL");
    try {
      sh("ip", ["netns", "delete", ns]);
    } catch {
      // gone
    }
    rmSync(home, { recursive: true, force: true });
  });
  const first = await startDaemon({ home, cache: join(home, "no-cache"), listen: "none", log: silentLogger() });
  await first.deps.network.create(admin, { name: "d1", cidr: "10.208.0.0/24" });
  await first.close();
  // A host reboot: the netns and dnsmasq are gone, the inventory says the network exists.
  for (const pid of dnsmasqPids(home)) process.kill(pid, "SIGKILL");
  sh("ip", ["netns", "delete", ns]);
  const second = await startDaemon({ home, cache: join(home, "no-cache"), listen: "none", log: silentLogger() });
  try {
    assert.ok(links(ns).some((l) => l.ifname === "vb-d1" && l.flags.includes("UP")), "the bridge is back and up");
    assert.equal(dnsmasqPids(home).length, 1, "dnsmasq is back");
    assert.equal((await second.deps.network.get(admin, "d1")).dhcpRunning, true);
    await second.deps.network.delete(admin, "d1");
    assert.doesNotMatch(netnsList(), new RegExp(`^${ns}\\b`, "m"));
  } finally {
    await second.close();
  }
});

test("a failing change listener (the firewall) fails the attach and leaves no tap and no lease", async (t) => {
  const f = await fixture(t);
  await f.net.create(admin, { name: "l1", cidr: "10.209.0.0/24" });
  const id = await f.vm("web1");
  let fail = true;
  const off = f.net.onChange(async () => {
    if (fail) throw new VigilError("VIGIL_HOST", "nft refused the ruleset");
  });
  const plug = { id, name: "web1", labels: {}, uid: 64500, gid: 64500 };
  await assert.rejects(f.net.attach(plug, { name: "net0", network: "l1", mac: "52:54:00:ee:00:01" }), /nft refused/);
  assert.ok(!links(f.ns).some((l) => l.ifname === tapName(id, "net0")), "no tap without its rules");
  assert.deepEqual(await f.net.attached(), []);
  const client = f.client("vb-l1");
  assert.equal(f.dhcp(client, "52:54:00:ee:00:01"), undefined, "and no lease");
  fail = false;
  const nic = await f.net.attach(plug, { name: "net0", network: "l1", mac: "52:54:00:ee:00:01" });
  assert.equal(nic.ip, "10.209.0.2", "the address was kept for the retry");
  off();
  await f.net.detach(id, "net0");
  await f.net.delete(admin, "l1");
});

test("a tap owned by a uid with a name (ip prints \"nobody\") is recognised: re-attach keeps it", async (t) => {
  const f = await fixture(t);
  await f.net.create(admin, { name: "o1", cidr: "10.210.0.0/24", dhcp: false });
  const id = await f.vm("web1");
  const plug = { id, name: "web1", labels: {}, uid: 65534, gid: 65534 };
  const nic = await f.net.attach(plug, { name: "net0", network: "o1", mac: "52:54:00:ff:00:01" });
  const again = await f.net.attach(plug, { name: "net0", network: "o1", mac: "52:54:00:ff:00:01" });
  assert.equal(again.tap, nic.tap);
  await assert.rejects(f.net.attach({ ...plug, uid: 64600, gid: 64600 }, { name: "net0", network: "o1", mac: "52:54:00:ff:00:01" }), /not a tap owned by uid 64600/, "a tap of another owner is not taken over");
  await f.net.detach(id, "net0");
  await f.net.delete(admin, "o1");
});
