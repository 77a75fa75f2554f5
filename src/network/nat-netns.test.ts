/**
 * `table ip vigil_nat` for real, without VMs and without the daemon's netns: a netns of the test's own plays
 * vigil's (two bridges, one of a NAT network, one not; an uplink veth to an "outside" netns, also the test's, with
 * the default route through it), and one probe netns per bridge plays a guest that has a default route via its
 * gateway. All traffic stays inside those namespaces; they are deleted afterwards whatever happened.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { natRuleset } from "./nat.ts";

function run(args: string[], input?: string): { status: number; out: string } {
  const r = spawnSync(args[0]!, args.slice(1), { encoding: "utf8", input, timeout: 20_000 });
  return { status: r.status ?? -1, out: `${r.stdout}${r.stderr}` };
}
function must(args: string[], input?: string): string {
  const r = run(args, input);
  if (r.status !== 0) throw new Error(`${args.join(" ")}: ${r.out}`);
  return r.out;
}
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

test("vigil_nat: a NAT network's guest gets out masqueraded, a network without NAT does not even with a route, nothing opens a connection from outside", { timeout: 60_000 }, async (t) => {
  const tag = randomBytes(3).toString("hex");
  const [V, O, PA, PB] = ["v", "o", "pa", "pb"].map((s) => `vt-natn-${tag}-${s}`) as [string, string, string, string];
  const up = `vu-t${tag}`;
  const procs: ChildProcess[] = [];
  t.after(() => {
    for (const p of procs) p.kill("SIGKILL");
    for (const ns of [V, O, PA, PB]) {
      for (const pid of run(["ip", "netns", "pids", ns]).out.split("\n").filter((p) => /^\d+$/.test(p))) {
        try {
          process.kill(Number(pid), "SIGKILL");
        } catch {
          /* gone */
        }
      }
      run(["ip", "netns", "del", ns]);
    }
  });
  for (const ns of [V, O, PA, PB]) {
    must(["ip", "netns", "add", ns]);
    must(["ip", "-n", ns, "link", "set", "lo", "up"]);
  }
  const x = (ns: string, ...args: string[]) => must(["ip", "netns", "exec", ns, ...args]);
  x(V, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1", "net.bridge.bridge-nf-call-iptables=1");
  // The uplink.
  must(["ip", "-n", V, "link", "add", up, "type", "veth", "peer", "name", `vo-${tag}`, "netns", O]);
  must(["ip", "-n", V, "addr", "add", "169.254.9.2/30", "dev", up]);
  must(["ip", "-n", V, "link", "set", up, "up"]);
  must(["ip", "-n", O, "addr", "add", "169.254.9.1/30", "dev", `vo-${tag}`]);
  must(["ip", "-n", O, "link", "set", `vo-${tag}`, "up"]);
  must(["ip", "-n", V, "route", "add", "default", "via", "169.254.9.1"]);
  must(["ip", "-n", O, "route", "add", "10.95.0.0/24", "via", "169.254.9.2"]);
  // Two networks, a probe "guest" on each.
  for (const [br, gw, probe, addr] of [["vb-a", "10.95.0.1/24", PA, "10.95.0.50/24"], ["vb-b", "10.96.0.1/24", PB, "10.96.0.50/24"]] as const) {
    must(["ip", "-n", V, "link", "add", br, "type", "bridge"]);
    must(["ip", "-n", V, "addr", "add", gw, "dev", br]);
    must(["ip", "-n", V, "link", "set", br, "up"]);
    const port = `vp-${br.slice(3)}${tag}`;
    must(["ip", "-n", V, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", probe]);
    must(["ip", "-n", V, "link", "set", port, "master", br]);
    must(["ip", "-n", V, "link", "set", port, "up"]);
    must(["ip", "-n", probe, "addr", "add", addr, "dev", "eth0"]);
    must(["ip", "-n", probe, "link", "set", "eth0", "up"]);
    must(["ip", "-n", probe, "route", "add", "default", "via", gw.split("/")[0]!]);
  }
  // The outside counts by source and echoes on 7200; vigil's netns has a service on the uplink address, 7201.
  must(["ip", "netns", "exec", O, "nft", "-f", "-"], 'table ip seen {\n\tchain input {\n\t\ttype filter hook input priority filter; policy accept;\n\t\tip saddr 169.254.9.2 tcp dport 7200 counter comment "masq"\n\t\tip saddr != 169.254.9.2 tcp dport 7200 counter comment "other"\n\t\ttcp dport 7203 counter comment "pre"\n\t}\n}\n');
  procs.push(spawn("ip", ["netns", "exec", O, "busybox", "nc", "-ll", "-p", "7200", "-e", "/bin/cat"], { stdio: "ignore" }));
  procs.push(spawn("ip", ["netns", "exec", V, "busybox", "nc", "-ll", "-p", "7201", "-e", "/bin/cat"], { stdio: "ignore" }));
  procs.push(spawn("ip", ["netns", "exec", PA, "busybox", "nc", "-ll", "-p", "7202", "-e", "/bin/cat"], { stdio: "ignore" }));
  await sleep(300);
  const send = (ns: string, ip: string, port: number) => run(["ip", "netns", "exec", ns, "sh", "-c", `echo ping-${tag} | busybox nc -w 2 ${ip} ${port}`]);
  const counts = () => {
    const text = must(["ip", "netns", "exec", O, "nft", "list", "table", "ip", "seen"]);
    const c = (tag: string) => Number(new RegExp(`counter packets (\\d+) bytes \\d+ comment "${tag}"`).exec(text)?.[1]);
    return { masq: c("masq"), other: c("other"), pre: c("pre") };
  };

  // Without vigil_nat: both probes get out unmasqueraded (the outside has no route back: no answer) and the outside
  // reaches vigil's netns — what the table must stop.
  // (port 7203: retransmissions of these SYNs must not count below.)
  assert.notEqual(send(PB, "169.254.9.1", 7203).out.includes(`ping-${tag}`), true);
  assert.ok(counts().pre >= 1, `without the table, the non-NAT probe's packets reach the outside: ${JSON.stringify(counts())}`);
  assert.ok(send(O, "169.254.9.2", 7201).out.includes(`ping-${tag}`), "without the table, the outside opens a connection into vigil's netns");
  assert.ok(send(O, "10.95.0.50", 7202).out.includes(`ping-${tag}`), "and to a guest");

  must(["ip", "netns", "exec", V, "nft", "-f", "-"], natRuleset(up, [{ cidr: "10.95.0.0/24", bridge: "vb-a" }]));

  const a = send(PA, "169.254.9.1", 7200);
  assert.ok(a.out.includes(`ping-${tag}`), `the NAT network's probe gets an answer from outside: ${a.out}`);
  assert.ok(counts().masq >= 1, "seen from the uplink address (masqueraded)");
  assert.equal(counts().other, 0, "and from no other address");
  const b = send(PB, "169.254.9.1", 7200);
  assert.ok(!b.out.includes(`ping-${tag}`), "the probe of the network without NAT gets nothing");
  assert.equal(counts().other, 0, "and nothing of it left vigil's netns");
  assert.ok(!send(O, "169.254.9.2", 7201).out.includes(`ping-${tag}`), "the outside opens no connection into vigil's netns");
  assert.ok(!send(O, "10.95.0.50", 7202).out.includes(`ping-${tag}`), "nor to a guest");
});
