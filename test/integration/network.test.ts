/**
 * VMs on vigil's switch (docs/network.md, "VM NICs"), with real QEMU under TCG, real taps and bridges — all inside
 * the network namespace the test's daemon owns (a unique `vt-` VIGIL_NETNS per test, removed in `after`).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { readdirSync, readFileSync } from "node:fs";
import { connect } from "node:net";
import { join } from "node:path";
import { parsePcap } from "../../src/network/pcap.ts";
import { randomBytes } from "node:crypto";
import { guestAddr, guestExec, requireTinyImage, startDaemon, waitFor } from "../harness.ts";


test("a user-mode NIC: the guest's DHCP client (udhcpc at boot, in the background) sets slirp's address", { timeout: 180_000 }, async (t) => {
  requireTinyImage();
  const d = await startDaemon(t);
  await d.api("POST", "/v1/vms", { name: "u1", memoryMiB: 128, vcpus: 1 });
  await d.api("POST", "/v1/vms/u1/start", { wait: true });
  assert.equal(await guestAddr(d, "u1"), "10.0.2.15");
  const listen = await guestExec(d, "u1", ["net-listen", "7000"]);
  assert.equal(listen.exitCode, 0, listen.err);
  assert.equal((await guestExec(d, "u1", ["net-listen", "7000"])).exitCode, 0, "idempotent");
  const send = await guestExec(d, "u1", ["net-send", "127.0.0.1", "7000"]);
  assert.equal(send.exitCode, 0, `${send.out} ${send.err}`);
  assert.match(send.out, /^vigil-net-/);
  const closed = await guestExec(d, "u1", ["net-send", "127.0.0.1", "7001"]);
  assert.equal(closed.exitCode, 1, "nothing listens on 7001: not reached");
});

const ip = (...args: string[]) => spawnSync("ip", args, { encoding: "utf8" });
const linkExists = (ns: string, dev: string) => ip("-n", ns, "link", "show", "dev", dev).status === 0;

/** A unique netns for this test's daemon (VIGIL_NETNS), removed afterwards whatever happened. */
function testNetns(t: { after: (fn: () => void) => void }): string {
  const ns = `vt-nic-${randomBytes(4).toString("hex")}`;
  const old = process.env.VIGIL_NETNS;
  process.env.VIGIL_NETNS = ns;
  t.after(() => {
    if (old === undefined) delete process.env.VIGIL_NETNS;
    else process.env.VIGIL_NETNS = old;
    // dnsmasq (or anything else) left inside: killed by pid, then the namespace goes.
    for (const pid of ip("netns", "pids", ns).stdout.split("\n").filter((p) => /^\d+$/.test(p))) {
      try {
        process.kill(Number(pid), "SIGKILL");
      } catch {
        /* gone */
      }
    }
    ip("netns", "del", ns);
  });
  return ns;
}

type NicView = { name: string; network: string; mac: string; ip: string; tap: string };

test("two guests on one vigil network: DHCP gives each its allocated address; deny-by-default inbound, an allowed port, anti-spoofing and quarantine with real guests; the taps live exactly as long as QEMU", { timeout: 400_000 }, async (t) => {
  requireTinyImage();
  const ns = testNetns(t);
  const d = await startDaemon(t);
  const created = d.cli("net", "create", "lab", "--cidr", "10.77.0.0/24");
  assert.equal(created.status, 0, created.stderr);
  for (const vm of ["a", "b"]) {
    const r = d.cli("vm", "create", vm, "--memory", "128", "--vcpus", "1", "--net", "lab");
    assert.equal(r.status, 0, r.stderr);
  }
  for (const vm of ["a", "b"]) await d.api("POST", `/v1/vms/${vm}/start`, { wait: true });
  const nics: Record<string, NicView> = {};
  for (const vm of ["a", "b"]) {
    const shown = JSON.parse(d.cli("vm", "show", vm, "--json").stdout) as { nics: NicView[]; spec: { nics: Array<{ mode: string; network?: string }> } };
    assert.deepEqual(shown.spec.nics.map((n) => [n.mode, n.network]), [["bridge", "lab"]]);
    assert.equal(shown.nics.length, 1, JSON.stringify(shown.nics));
    nics[vm] = shown.nics[0]!;
    assert.equal(nics[vm].network, "lab");
    assert.match(nics[vm].ip, /^10\.77\.0\.\d+$/);
    assert.ok(linkExists(ns, nics[vm].tap), `tap ${nics[vm].tap} of ${vm} in ${ns}`);
    assert.equal(await guestAddr(d, vm), nics[vm].ip, `${vm}'s DHCP address is the one vigil allocated`);
  }
  assert.notEqual(nics.a!.ip, nics.b!.ip);
  const cli = (...args: string[]) => {
    const r = d.cli(...args);
    assert.equal(r.status, 0, `vigil ${args.join(" ")}: ${r.stderr}`);
    return r.stdout;
  };
  const reach = async (port: number) => (await guestExec(d, "a", ["net-send", nics.b!.ip, String(port)])).exitCode === 0;
  for (const port of ["7000", "7001"]) assert.equal((await guestExec(d, "b", ["net-listen", port])).exitCode, 0);

  // Deny inbound by default: both of B's ports listen, neither is reachable, not even ping.
  assert.equal(await reach(7000), false, "default policy: inbound denied");
  assert.notEqual((await guestExec(d, "a", ["net-ping", nics.b!.ip])).exitCode, 0, "default policy: no ping either");
  // B's owner opens 7000 and ICMP: allowed port reachable, denied port (listening) not.
  cli("fw", "add", "b", "--dir", "in", "--proto", "tcp", "--port", "7000");
  cli("fw", "add", "b", "--dir", "in", "--proto", "icmp");
  const sent = await guestExec(d, "a", ["net-send", nics.b!.ip, "7000"]);
  assert.equal(sent.exitCode, 0, `A reaches B:7000 once allowed: ${sent.out} ${sent.err}`);
  assert.match(sent.out, /^vigil-net-/);
  assert.equal(await reach(7001), false, "B:7001 listens but is not allowed");
  const ping = await guestExec(d, "a", ["net-ping", nics.b!.ip]);
  assert.equal(ping.exitCode, 0, `A pings B: ${ping.out} ${ping.err}`);
  assert.notEqual((await guestExec(d, "a", ["net-ping", "10.77.0.250"])).exitCode, 0, "nobody at .250");
  const shownFw = JSON.parse(cli("fw", "show", "b", "--json")) as Record<string, unknown>;
  assert.match(JSON.stringify(shownFw), /7000/, "fw show prints the policy and the installed rules");

  // Quarantine: A may then reach only the zone's named service (B:7000), not B:7001 which B now allows;
  // release gives 7001 back. Neither step restarts A (same boot id).
  cli("fw", "add", "b", "--dir", "in", "--proto", "tcp", "--port", "7001");
  assert.equal(await reach(7001), true, "B allows 7001 now");
  const bootId = async () => (await d.api<{ bootId: string }>("GET", "/v1/vms/a/guest/info")).bootId;
  const boot0 = await bootId();
  cli("net", "service", "add", "scan", "--addr", nics.b!.ip, "--port", "7000");
  cli("vm", "quarantine", "a", "--reason", "integration test");
  assert.equal(await reach(7001), false, "quarantined: B:7001 is not a named service");
  assert.equal(await reach(7000), true, "quarantined: the named service B:7000 is reachable");
  cli("vm", "release", "a");
  assert.equal(await reach(7001), true, "released: B:7001 reachable again");
  assert.equal(await bootId(), boot0, "quarantine and release did not restart A");

  // Visibility: a time-boxed mirror of A's NIC holds the test's own traffic (read with vigil's pcap reader and
  // cross-checked with tcpdump -r), it is one of A's data files, and the counters moved.
  const mirror = d.api<{ id: string; packets: number; bytes: number }>("POST", "/v1/vms/a/net/mirror", { durationMs: 8000 });
  await new Promise((r) => setTimeout(r, 2500));
  const mirrored = await guestExec(d, "a", ["net-send", nics.b!.ip, "7000"]);
  assert.equal(mirrored.exitCode, 0, mirrored.err);
  const capture = await mirror;
  assert.ok(capture.packets > 0, JSON.stringify(capture));
  const vmDir = join(d.home, "vms", (await d.api<{ id: string }>("GET", "/v1/vms/a")).id, "captures");
  const files = readdirSync(vmDir).map((f) => join(vmDir, f));
  assert.equal(files.length, 1, files.join(" "));
  const pcap = parsePcap(readFileSync(files[0]!));
  const token = Buffer.from(mirrored.out);
  assert.ok(pcap.packets.some((p) => Buffer.from(p.data).includes(token)), `the capture holds the token ${mirrored.out}`);
  const dump = spawnSync("tcpdump", ["-r", files[0]!, "-nn", "-A"], { encoding: "utf8" });
  assert.equal(dump.status, 0, dump.stderr);
  assert.ok(dump.stdout.includes(mirrored.out) && dump.stdout.includes(`${nics.b!.ip}.7000`), "tcpdump -r sees the same traffic");
  assert.ok(d.cli("vm", "where", "a", "--json").stdout.includes(files[0]!), "the capture is registered as A's data");
  const counters = await d.api<Array<{ nic: string; rx: { packets: number }; tx: { packets: number } }>>("GET", "/v1/vms/a/net/counters");
  assert.ok(counters[0]!.rx.packets > 0 && counters[0]!.tx.packets > 0, JSON.stringify(counters));

  // A user on the host reaches B's service through a loopback port forward.
  const port = 20_000 + Math.floor(Math.random() * 20_000);
  await d.api("POST", "/v1/vms/b/net/forwards", { guestPort: 7000, listen: `127.0.0.1:${port}` });
  const echoed = await new Promise<string>((resolve, reject) => {
    const sock = connect(port, "127.0.0.1", () => sock.write("through-the-forward\n"));
    let got = "";
    sock.on("data", (b: Buffer) => {
      got += b.toString();
      if (got.includes("\n")) {
        sock.destroy();
        resolve(got.trim());
      }
    });
    sock.on("error", reject);
    setTimeout(() => reject(new Error(`no echo through the forward (got ${JSON.stringify(got)})`)), 10_000).unref();
  });
  assert.equal(echoed, "through-the-forward");

  // A daemon restart with both VMs running re-plumbs nothing and unplugs nothing: same taps, same rules.
  await d.kill9();
  await d.restart();
  await new Promise((r) => setTimeout(r, 1500));
  for (const vm of ["a", "b"]) {
    assert.ok(linkExists(ns, nics[vm]!.tap), `tap of ${vm} survives the daemon restart`);
    const shown = JSON.parse(d.cli("vm", "show", vm, "--json").stdout) as { nics: NicView[] };
    assert.deepEqual(shown.nics, [nics[vm]], `vm show of ${vm} after the restart: read back from the switch`);
  }
  assert.equal(await reach(7000), true, "after the restart A still reaches B:7000");
  assert.equal(await reach(7002), false, "and B's default deny still holds");

  // Anti-spoofing: A taking another address (10.77.0.200) is dropped at its port; its own address works again.
  const spoof = await guestExec(d, "a", ["net-spoof", "10.77.0.200"]);
  assert.equal(spoof.exitCode, 0, spoof.err);
  assert.equal((await guestExec(d, "a", ["net-addr"])).out, "10.77.0.200");
  assert.equal(await reach(7000), false, "a guest sending from another IP is dropped");
  assert.equal((await guestExec(d, "a", ["net-spoof", nics.a!.ip])).exitCode, 0);
  assert.equal(await reach(7000), true, "back on its own address, A reaches B again");

  // B's QEMU dies on its own (a crash): the supervisor unplugs it. A is stopped: the stop unplugs it.
  const b = await d.api<{ pid: number }>("GET", "/v1/vms/b");
  process.kill(b.pid, "SIGKILL");
  await waitFor(() => !linkExists(ns, nics.b!.tap), 30_000, "the crashed VM's tap to go");
  const shownCmd = JSON.parse(d.cli("vm", "showcmd", "a", "--json").stdout) as { argv: string[] };
  assert.ok(shownCmd.argv.some((a) => a.endsWith(`:/run/netns/${ns}:${nics.a!.tap}`)), "showcmd names the tap the jail opens");
  assert.ok(shownCmd.argv.some((a) => /^tap,id=net0,fd=\d+,vhost=off$/.test(a)), shownCmd.argv.join(" "));
  await d.api("POST", "/v1/vms/a/stop", { timeoutSec: 30 });
  assert.equal(linkExists(ns, nics.a!.tap), false, "the tap of a is gone once it stopped");
  assert.deepEqual((JSON.parse(d.cli("vm", "show", "a", "--json").stdout) as { nics: unknown[] }).nics, [], "a stopped VM shows no plugged NIC");
  assert.equal((await d.api<{ state: string }>("GET", "/v1/vms/b")).state, "crashed");
  for (const vm of ["a", "b"]) assert.equal(d.cli("vm", "destroy", vm).status, 0);
  const deleted = d.cli("net", "delete", "lab");
  assert.equal(deleted.status, 0, deleted.stderr);
  assert.doesNotMatch(ip("netns", "list").stdout, new RegExp(`^${ns}\\b`, "m"), "no netns left (and so no bridge)");
});

test("a start that cannot plug every bridged NIC in fails, leaves the VM stopped and unplugs the NICs it had plugged", { timeout: 120_000 }, async (t) => {
  requireTinyImage();
  const ns = testNetns(t);
  const d = await startDaemon(t);
  await d.api("POST", "/v1/networks", { name: "lab", cidr: "10.78.0.0/24" });
  await d.api("POST", "/v1/vms", { name: "half", memoryMiB: 128, nics: [{ network: "lab" }, { network: "nowhere" }] });
  await assert.rejects(d.api("POST", "/v1/vms/half/start", {}), /network "nowhere" does not exist/);
  assert.equal((await d.api<{ state: string }>("GET", "/v1/vms/half")).state, "stopped");
  const links = ip("-n", ns, "-o", "link", "show").stdout;
  assert.doesNotMatch(links, /: vt-/, `no tap left behind: ${links}`);
  assert.deepEqual((await d.api<{ attached: unknown[] }>("GET", "/v1/networks/lab")).attached, []);
});
