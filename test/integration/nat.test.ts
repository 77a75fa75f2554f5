/**
 * NAT to the outside (docs/network.md, "## NAT") with real guests, without touching this machine's own network:
 * the daemon runs inside a netns the test creates ("vt-nat-<rand>-host", via `nsenter --net`, so it plays the
 * host), which has a veth to a second test netns ("vt-nat-<rand>-world") holding 192.0.2.1 (TEST-NET-1) with a
 * busybox nc echo service; the fake host routes 192.0.2.0/24 there. vigil's own netns is "vt-nat-<rand>-vigil"
 * (VIGIL_NETNS). Every namespace is deleted afterwards, whatever happened; the real host's links, nft tables and
 * ip_forward are checked to be untouched.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { guestAddr, guestExec, requireTinyImage, startDaemon } from "../harness.ts";
import { uplinkNames } from "../../src/network/nat.ts";


function run(cmd: string, args: string[], input?: string): string {
  const r = spawnSync(cmd, args, { encoding: "utf8", input });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(" ")}: ${r.stderr}`);
  return r.stdout;
}
const inNs = (ns: string, cmd: string, args: string[], input?: string) => run("ip", ["netns", "exec", ns, cmd, ...args], input);
const linkNames = (ns?: string): string[] => (JSON.parse(run("ip", [...(ns ? ["-n", ns] : []), "-j", "link", "show"]) || "[]") as Array<{ ifname: string }>).map((l) => l.ifname);
const tables = (ns?: string): string => (ns ? inNs(ns, "nft", ["list", "tables"]) : run("nft", ["list", "tables"]));
const forward = (ns?: string): string => (ns ? inNs(ns, "cat", ["/proc/sys/net/ipv4/ip_forward"]) : readFileSync("/proc/sys/net/ipv4/ip_forward", "utf8")).trim();

/** Packets counted in the world netns by the source they came from. */
function worldCounts(world: string): { fromHost: number; fromElsewhere: number } {
  const text = inNs(world, "nft", ["list", "table", "ip", "vt_seen"]);
  const count = (tag: string) => Number(new RegExp(`counter packets (\\d+) bytes \\d+ comment "${tag}"`).exec(text)?.[1] ?? NaN);
  return { fromHost: count("from-host"), fromElsewhere: count("from-elsewhere") };
}

test("a --nat network's guest reaches the outside, masqueraded; a guest of a network without NAT does not; the last NAT network's deletion puts the host back", { timeout: 600_000 }, async (t) => {
  requireTinyImage();
  const tag = randomBytes(3).toString("hex");
  const hostNs = `vt-nat-${tag}-host`;
  const worldNs = `vt-nat-${tag}-world`;
  const vigilNs = `vt-nat-${tag}-vigil`;
  const up = uplinkNames(vigilNs);
  const port = 7100 + (randomBytes(1)[0]! % 100);

  const realForward = forward();
  const assertRealHostUntouched = (when: string) => {
    const links = linkNames();
    assert.ok(!links.includes(up.host) && !links.includes(up.vigil), `${when}: no uplink device in the real host netns`);
    assert.ok(!links.some((l) => l.startsWith(`vt-nat`) || l.startsWith("vt-nh-") || l.startsWith("vt-nw-")), `${when}: no test device in the real host netns`);
    assert.doesNotMatch(tables(), /vigil_uplink|vigil_nat/, `${when}: no NAT table in the real host netns`);
    assert.equal(forward(), realForward, `${when}: the real host's ip_forward is as it was`);
  };

  const procs: ChildProcess[] = [];
  const oldNetns = process.env.VIGIL_NETNS;
  process.env.VIGIL_NETNS = vigilNs;
  t.after(() => {
    if (oldNetns === undefined) delete process.env.VIGIL_NETNS;
    else process.env.VIGIL_NETNS = oldNetns;
    for (const p of procs) p.kill("SIGKILL");
    for (const ns of [vigilNs, hostNs, worldNs]) {
      for (const pid of spawnSync("ip", ["netns", "pids", ns], { encoding: "utf8" }).stdout.split("\n").filter((p) => /^\d+$/.test(p))) {
        try {
          process.kill(Number(pid), "SIGKILL");
        } catch {
          /* gone */
        }
      }
      spawnSync("ip", ["netns", "del", ns]);
    }
  });

  // The fake host and the world: 198.51.100.0/30 between them (TEST-NET-2), 192.0.2.1 (TEST-NET-1) in the world.
  run("ip", ["netns", "add", hostNs]);
  run("ip", ["netns", "add", worldNs]);
  run("ip", ["-n", hostNs, "link", "add", `vt-nh-${tag}`, "type", "veth", "peer", "name", `vt-nw-${tag}`, "netns", worldNs]);
  for (const [ns, dev, addr] of [[hostNs, `vt-nh-${tag}`, "198.51.100.1/30"], [worldNs, `vt-nw-${tag}`, "198.51.100.2/30"]] as const) {
    run("ip", ["-n", ns, "link", "set", "lo", "up"]);
    run("ip", ["-n", ns, "addr", "add", addr, "dev", dev]);
    run("ip", ["-n", ns, "link", "set", dev, "up"]);
  }
  run("ip", ["-n", worldNs, "addr", "add", "192.0.2.1/24", "dev", "lo"]);
  run("ip", ["-n", hostNs, "route", "add", "192.0.2.0/24", "via", "198.51.100.2"]);
  assert.equal(forward(hostNs), "0", "a new netns starts with ip_forward=0");
  inNs(worldNs, "nft", ["-f", "-"], [
    "table ip vt_seen {",
    "\tchain input {",
    "\t\ttype filter hook input priority filter; policy accept;",
    `\t\tip saddr 198.51.100.1 tcp dport ${port} tcp flags syn counter comment "from-host"`,
    `\t\tip saddr != 198.51.100.1 tcp dport ${port} counter comment "from-elsewhere"`,
    "\t}",
    "}",
  ].join("\n") + "\n");
  procs.push(spawn("ip", ["netns", "exec", worldNs, "busybox", "nc", "-ll", "-p", String(port), "-e", "/bin/cat"], { stdio: "ignore" }));

  const d = await startDaemon(t, { wrap: ["nsenter", `--net=/run/netns/${hostNs}`, "--"] });
  const hostTablesBefore = tables(hostNs);

  const plain = d.cli("net", "create", "inside", "--cidr", "10.94.0.0/24");
  assert.equal(plain.status, 0, plain.stderr);
  assert.ok(!linkNames(hostNs).includes(up.host), "a network without NAT creates no uplink");
  assert.equal(forward(hostNs), "0");
  // A NAT create that fails (a device that is not vigil's squats the uplink's name in the daemon's netns) leaves
  // nothing: no network, no bridge, no table, ip_forward as it was — and the squatter is not vigil's to delete.
  run("ip", ["-n", hostNs, "link", "add", up.host, "type", "bridge"]);
  const failed = d.cli("net", "create", "out", "--cidr", "10.93.0.0/24", "--nat");
  assert.notEqual(failed.status, 0, "the create fails");
  assert.match(failed.stderr, new RegExp(`a device named "${up.host}" exists in the daemon's network namespace and is not vigil's`));
  assert.ok(linkNames(hostNs).includes(up.host), "the squatter is left alone");
  run("ip", ["-n", hostNs, "link", "del", up.host]);
  assert.ok(!linkNames(vigilNs).includes("vb-out"), "no bridge left");
  assert.deepEqual((JSON.parse(d.cli("net", "list", "--json").stdout) as Array<{ name: string }>).map((n) => n.name), ["inside"], "no row left");
  assert.equal(tables(hostNs), hostTablesBefore, "no table left in the daemon's netns");
  assert.doesNotMatch(tables(vigilNs), /vigil_nat/);
  assert.equal(forward(hostNs), "0", "ip_forward of the daemon's netns as it was");

  const created = d.cli("net", "create", "out", "--cidr", "10.93.0.0/24", "--nat");
  assert.equal(created.status, 0, created.stderr);
  assert.match(created.stdout, /NAT to the outside/);

  // What NAT set up, and where.
  assert.ok(linkNames(hostNs).includes(up.host), `${up.host} in the daemon's netns`);
  assert.ok(linkNames(vigilNs).includes(up.vigil), `${up.vigil} in vigil's netns`);
  assert.equal(forward(hostNs), "1", "the daemon's netns forwards");
  assert.equal(forward(vigilNs), "1", "vigil's netns forwards while a NAT network exists");
  assert.match(tables(hostNs), /table ip vigil_uplink/);
  assert.match(tables(vigilNs), /table ip vigil_nat/);
  const shown = JSON.parse(d.cli("net", "show", "out", "--json").stdout) as { nat: boolean; uplink: { vigilDevice: string; hostDevice: string; linkNet: string } };
  assert.equal(shown.nat, true);
  assert.deepEqual([shown.uplink.vigilDevice, shown.uplink.hostDevice], [up.vigil, up.host]);
  assert.match(shown.uplink.linkNet, /^169\.254\.\d+\.\d+\/30$/);
  assert.match(inNs(vigilNs, "ip", ["route", "show", "default"]), new RegExp(`default via 169\\.254\\.\\d+\\.\\d+ dev ${up.vigil}`));
  const listed = JSON.parse(d.cli("net", "list", "--json").stdout) as Array<{ name: string; nat: boolean }>;
  assert.deepEqual(listed.map((n) => [n.name, n.nat]), [["inside", false], ["out", true]]);
  assert.match(d.cli("net", "list").stdout, /NAT/);
  assertRealHostUntouched("after create");

  for (const [vm, net] of [["g-out", "out"], ["g-in", "inside"]] as const) {
    const r = d.cli("vm", "create", vm, "--memory", "128", "--vcpus", "1", "--net", net);
    assert.equal(r.status, 0, r.stderr);
    await d.api("POST", `/v1/vms/${vm}/start`, { wait: true });
  }
  assert.match(await guestAddr(d, "g-out", 90_000), /^10\.93\.0\.\d+$/);
  assert.match(await guestAddr(d, "g-in", 90_000), /^10\.94\.0\.\d+$/);

  const sent = await guestExec(d, "g-out", ["net-send", "192.0.2.1", String(port)]);
  assert.equal(sent.exitCode, 0, `the NAT guest reaches 192.0.2.1:${port}: ${sent.out} ${sent.err}`);
  const first = worldCounts(worldNs);
  assert.ok(first.fromHost >= 1, `the world saw the connection from the host end 198.51.100.1: ${JSON.stringify(first)}`);
  assert.equal(first.fromElsewhere, 0, "and from no other address (the guest's and the link net's are masqueraded)");

  // A daemon restart keeps the way out (reconcile re-applies it; nothing is torn down).
  await d.kill9();
  await d.restart();
  assert.ok(linkNames(hostNs).includes(up.host) && linkNames(vigilNs).includes(up.vigil), "the uplink survives a daemon restart");
  assert.equal(forward(vigilNs), "1");
  const again = await guestExec(d, "g-out", ["net-send", "192.0.2.1", String(port)]);
  assert.equal(again.exitCode, 0, `after the restart the NAT guest still gets out: ${again.out} ${again.err}`);
  const seen = worldCounts(worldNs);
  assert.equal(seen.fromElsewhere, 0);

  const blocked = await guestExec(d, "g-in", ["net-send", "192.0.2.1", String(port)]);
  assert.notEqual(blocked.exitCode, 0, `the guest of a network without NAT does not get out: ${blocked.out}`);
  assert.deepEqual(worldCounts(worldNs), seen, "nothing of it reached the world");
  assertRealHostUntouched("after traffic");

  for (const vm of ["g-out", "g-in"]) assert.equal(d.cli("vm", "destroy", vm, "--force").status, 0);
  const deleted = d.cli("net", "delete", "out");
  assert.equal(deleted.status, 0, deleted.stderr);
  assert.ok(!linkNames(hostNs).includes(up.host), "the uplink is gone from the daemon's netns");
  assert.ok(!linkNames(vigilNs).includes(up.vigil), "and from vigil's");
  assert.equal(tables(hostNs), hostTablesBefore, "the daemon's netns has the nft tables it had before NAT");
  assert.doesNotMatch(tables(vigilNs), /vigil_nat/);
  assert.equal(forward(hostNs), "0", "ip_forward of the daemon's netns is back to what it was");
  assert.equal(forward(vigilNs), "0");
  const { records } = await d.api<{ records: Array<{ action: string; details: { change?: string; hostDevice?: string; forward?: { before: string; after: string } } }> }>("GET", "/v1/audit?tail=true&limit=50");
  const uplinkChanges = records.filter((r) => r.action === "net.uplink").map((r) => [r.details.change, r.details.hostDevice, r.details.forward?.before, r.details.forward?.after]);
  assert.deepEqual(uplinkChanges, [["created", up.host, "0", "1"], ["removed", up.host, "1", "0"]], "each change to the daemon's netns is audited (net.uplink)");
  assert.equal(d.cli("net", "delete", "inside").status, 0);
  assertRealHostUntouched("after delete");
});
