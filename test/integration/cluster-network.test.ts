/**
 * A network that spans two hosts (docs/cluster.md "Networks across hosts (VXLAN)"), with real guests: the manager
 * makes `lab` on both agents (one VXLAN segment over the test's underlay), guest a on h1 pings guest b on h2 once
 * b's policy allows it, a port b's policy does not allow stays refused across hosts; b migrates live to h1, keeps
 * its address, and a still reaches it (and still not the refused port). Every namespace is the test's own.
 */
import { strict as assert } from "node:assert";
import { spawnSync } from "node:child_process";
import { test } from "node:test";
import { netnsName } from "../../src/network/netns.ts";
import { parseIpv4 } from "../../src/network/ipam.ts";
import { cluster } from "../cluster-topology.ts";
import { guestAddr, guestExec, type DaemonHandle } from "../harness.ts";

interface Migration { id: string; state: string; phase: string; error: string | null }
interface ClusterNet { name: string; vni: number; hosts: { host: string; address: string; pool: { first: string; last: string } }[] }

/** The agents' vigil netns (and the dnsmasqs inside) go even when the test fails. */
function cleanVigilNetns(t: { after(fn: () => void): void }, agents: DaemonHandle[]): void {
  t.after(() => {
    for (const a of agents) {
      const ns = netnsName(a.home);
      const pids = spawnSync("ip", ["netns", "pids", ns], { encoding: "utf8" }).stdout ?? "";
      for (const pid of pids.split("\n").filter((p) => /^\d+$/.test(p))) {
        try {
          process.kill(Number(pid), "SIGKILL");
        } catch {
          /* gone */
        }
      }
      spawnSync("ip", ["netns", "delete", ns]);
    }
  });
}

const inPool = (ip: string, pool: { first: string; last: string }) => parseIpv4(ip)! >= parseIpv4(pool.first)! && parseIpv4(ip)! <= parseIpv4(pool.last)!;

async function eventually(what: string, fn: () => Promise<boolean>, tries = 15): Promise<void> {
  for (let i = 0; i < tries; i++) {
    if (await fn()) return;
    await new Promise((r) => setTimeout(r, 1000));
  }
  assert.fail(what);
}

test("a network spans two hosts: a guest on h1 reaches one on h2 as its policy allows, and still after that guest migrated to h1 with its address", { timeout: 900_000 }, async (t) => {
  const { manager, agents } = await cluster(t);
  cleanVigilNetns(t, agents);
  const [a1, a2] = agents as [DaemonHandle, DaemonHandle];
  // `vigil net` on the manager's socket makes it on every host.
  const created = manager.cli("net", "create", "lab", "--cidr", "10.77.0.0/24", "--json");
  assert.equal(created.status, 0, created.stderr);
  const net = JSON.parse(created.stdout) as ClusterNet;
  assert.deepEqual(net.hosts.map((h) => h.host), ["h1", "h2"]);
  const pool = Object.fromEntries(net.hosts.map((h) => [h.host, h.pool]));
  const listed = manager.cli("net", "list", "--json");
  assert.equal(listed.status, 0, listed.stderr);
  assert.deepEqual((JSON.parse(listed.stdout) as ClusterNet[]).map((n) => [n.name, n.vni]), [["lab", net.vni]]);
  for (const [a, peer] of [[a1, "10.251.0.2"], [a2, "10.251.0.1"]] as const) {
    const shown = await a.api<{ span?: { vni: number; peers: string[]; device: string } }>("GET", "/v1/networks/lab");
    assert.deepEqual(shown.span && [shown.span.vni, shown.span.peers, shown.span.device], [net.vni, [peer], "vx-lab"]);
  }
  // span is the manager's: an agent's own socket refuses it.
  await assert.rejects(a1.api("POST", "/v1/networks", { name: "other", cidr: "10.78.0.0/24", span: { vni: 9, peers: ["10.251.0.2"], pool: { first: "10.78.0.2", last: "10.78.0.9" } } }), /only the cluster manager sets span/);

  for (const [vm, host] of [["a", "h1"], ["b", "h2"]]) {
    await manager.api("POST", "/v1/vms", { name: vm, memoryMiB: 128, vcpus: 1, host, nics: [{ network: "lab" }] });
    await manager.api("POST", `/v1/vms/${vm}/start`, { wait: true });
  }
  const ipA = await guestAddr(manager, "a", 90_000);
  const ipB = await guestAddr(manager, "b", 90_000);
  assert.ok(inPool(ipA, pool.h1!), `a (on h1) got ${ipA} from h1's pool`);
  assert.ok(inPool(ipB, pool.h2!), `b (on h2) got ${ipB} from h2's pool`);
  for (const port of ["7000", "7001"]) assert.equal((await guestExec(manager, "b", ["net-listen", port])).exitCode, 0);
  const ping = async () => (await guestExec(manager, "a", ["net-ping", ipB])).exitCode === 0;
  const reach = async (port: number) => (await guestExec(manager, "a", ["net-send", ipB, String(port)])).exitCode === 0;

  // b's default policy refuses inbound, across hosts as on one.
  assert.equal(await ping(), false, "b's default policy: no ping from another host");
  // b's rules through the manager (forwarded to b's agent).
  for (const rule of [{ direction: "in", action: "accept", proto: "icmp" }, { direction: "in", action: "accept", proto: "tcp", ports: "7000" }]) {
    await manager.api("POST", "/v1/vms/b/firewall/rules", { rule });
  }
  await eventually("a (h1) pings b (h2) once b allows icmp", ping);
  assert.equal(await reach(7000), true, "b:7000 allowed, reached across hosts");
  assert.equal(await reach(7001), false, "b:7001 listens but is not allowed: refused across hosts");

  const started = await manager.api<Migration>("POST", "/v1/vms/b/migrate", { to: "h1" });
  let m = started;
  for (const deadline = Date.now() + 300_000; m.state === "running"; ) {
    if (Date.now() > deadline) assert.fail(`migration still ${m.phase}`);
    await new Promise((r) => setTimeout(r, 500));
    m = await manager.api<Migration>("GET", `/v1/migrations/${started.id}`);
  }
  assert.equal(m.state, "completed", m.error ?? "");
  const shown = await manager.api<{ attached: { vmName: string; ip: string; host: string }[] }>("GET", "/v1/networks/lab");
  assert.deepEqual(shown.attached.map((n) => [n.vmName, n.host]).sort(), [["a", "h1"], ["b", "h1"]], "both NICs now plugged in on h1");
  const b = await a1.api<{ state: string; nics: { ip: string }[] }>("GET", "/v1/vms/b");
  assert.equal(b.state, "running");
  assert.deepEqual(b.nics.map((n) => n.ip), [ipB], "b kept its address (from h2's pool) on h1");
  await eventually("a still pings b, now on the same host", ping, 30);
  assert.equal(await reach(7000), true, "b:7000 still allowed after the migration");
  assert.equal(await reach(7001), false, "b:7001 still refused after the migration");

  // Cleanup through the manager: the VMs, then the network everywhere.
  for (const vm of ["a", "b"]) {
    await manager.api("POST", `/v1/vms/${vm}/stop`, { timeoutSec: 5 }).catch(() => undefined);
    await manager.api("DELETE", `/v1/vms/${vm}`);
  }
  assert.deepEqual(await manager.api("DELETE", "/v1/networks/lab"), { deleted: "lab", hosts: ["h1", "h2"] });
  for (const a of agents) assert.ok(!spawnSync("ip", ["netns", "list"], { encoding: "utf8" }).stdout.includes(netnsName(a.home)), "the agent's vigil netns is gone with its last network");
});
