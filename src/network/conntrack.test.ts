import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { test } from "node:test";
import fc from "fast-check";
import { VigilError } from "../errors.ts";
import { runCommand } from "../util/run-command.ts";
import { exportFlows, importArgs, importFlows, parseFlowLine, parseFlows } from "./conntrack.ts";
import { VisFixture, echoServer } from "./vis-fixture.ts";

const LINE = "ipv4     2 tcp      6 431999 ESTABLISHED src=10.98.0.10 dst=10.98.0.11 sport=36356 dport=5003 src=10.98.0.11 dst=10.98.0.10 sport=5003 dport=36356 [ASSURED] mark=0 use=1";

test("parseFlowLine reads conntrack's extended format", () => {
  const f = parseFlowLine(LINE);
  assert.deepEqual(f, { family: "ipv4", proto: "tcp", protonum: 6, timeout: 431999, state: "ESTABLISHED", original: { src: "10.98.0.10", dst: "10.98.0.11", sport: 36356, dport: 5003 }, reply: { src: "10.98.0.11", dst: "10.98.0.10", sport: 5003, dport: 36356 }, assured: true, replied: true, mark: 0 });
  const igmp = parseFlowLine("ipv4     2 unknown  2 599 src=0.0.0.0 dst=224.0.0.22 [UNREPLIED] src=224.0.0.22 dst=0.0.0.0 mark=0 use=1");
  assert.equal(igmp.proto, "unknown");
  assert.equal(parseFlowLine("ipv4     2 udp      17 29 src=10.0.0.1 dst=10.0.0.2 sport=1 dport=53 [UNREPLIED] src=10.0.0.2 dst=10.0.0.1 sport=53 dport=1 mark=7 zone=3 use=1").zone, 3);
  assert.deepEqual(importArgs(f), ["-I", "-p", "tcp", "-s", "10.98.0.10", "-d", "10.98.0.11", "--sport", "36356", "--dport", "5003", "-r", "10.98.0.11", "-q", "10.98.0.10", "--reply-port-src", "5003", "--reply-port-dst", "36356", "-t", "431999", "--state", "ESTABLISHED", "-u", "SEEN_REPLY,ASSURED"]);
  assert.throws(() => importArgs(igmp), /only tcp and udp/);
  for (const [text, why] of [
    [LINE.replace("ipv4     2", "ipv5 2"), /family/],
    [LINE.replace("ESTABLISHED", "BOGUS"), /not a TCP state/],
    [LINE.replace("sport=36356", "sport=70000"), /sport "70000"/],
    [LINE.replace("src=10.98.0.10", "src=10.98.0.300"), /not an IP address/],
    [LINE.replace(" mark=0", " secret=1"), /unknown field "secret"/],
    [LINE.replace(/src=10.98.0.11 dst=10.98.0.10 sport=5003 dport=36356 /, ""), /original and a reply/],
    [LINE.replace(" sport=5003", ""), /needs ports/],
    [LINE + " x".repeat(600), /longer than/],
  ] as const) assert.throws(() => parseFlowLine(text), why, text);
  assert.throws(() => parseFlows(`${LINE}\ngarbage\n`), /line 2/);
});

test("parseFlows on random bytes returns or throws a VigilError, always", () => {
  fc.assert(
    fc.property(fc.string({ maxLength: 2000 }), fc.array(fc.constantFrom("ipv4", "2", "tcp", "6", "10", "src=1.2.3.4", "dst=::1", "sport=1", "dport=2", "[ASSURED]", "mark=1", "zone=2", "ESTABLISHED", "=", "\n"), { maxLength: 40 }), (s, toks) => {
      for (const text of [s, toks.join(" ")]) {
        try {
          parseFlows(text);
        } catch (err) {
          assert.ok(err instanceof VigilError, String(err));
        }
      }
    }),
    { numRuns: 500 },
  );
});

/** An interactive busybox nc client in a fixture VM: writes lines, tells whether each echo came back in time. */
function client(nsName: string, ip: string, port: number) {
  const child = spawn("ip", ["netns", "exec", nsName, "busybox", "nc", ip, String(port)], { stdio: ["pipe", "pipe", "ignore"] });
  let got = "";
  child.stdout.on("data", (d: Buffer) => (got += d.toString()));
  return {
    async echo(line: string, timeoutMs: number): Promise<boolean> {
      child.stdin.write(`${line}\n`);
      const end = Date.now() + timeoutMs;
      while (Date.now() < end) {
        if (got.includes(line)) return true;
        await new Promise((r) => setTimeout(r, 50));
      }
      return false;
    },
    close: () => child.kill("SIGKILL"),
  };
}

test("an exported flow imported after a flush lets the same TCP connection continue through an established-only firewall", async (t) => {
  const f = await VisFixture.create(2);
  t.after(() => f.close());
  const [a, b] = [f.vm("vm0"), f.vm("vm1")];
  const server = await echoServer(b, 5002);
  t.after(() => server.kill("SIGKILL"));
  const nft = (script: string) => runCommand("ip", ["netns", "exec", f.sw.name, "nft", "-f", "-"], { input: script });
  // Inbound to vm1 is denied except established; a new connection is allowed only while the "open" rule exists.
  await nft(`table inet vt_test {\n chain fwd_chain {\n  type filter hook forward priority 0; policy drop;\n  ct state established,related accept\n  ip daddr ${b.nic.ip} tcp dport 5002 ct state new accept comment "open"\n }\n}\n`);
  const c = client(a.ns.name, b.nic.ip, 5002);
  t.after(() => c.close());
  assert.ok(await c.echo("one", 3000), "the connection works while new connections are allowed");
  // Close the door for new connections: the established one keeps going.
  await nft(`flush chain inet vt_test fwd_chain\nadd rule inet vt_test fwd_chain ct state established,related accept\nadd rule inet vt_test fwd_chain ct state invalid counter\nadd rule inet vt_test fwd_chain ct state new counter\n`);
  assert.ok(await c.echo("two", 3000), "established traffic passes");

  const flows = await exportFlows(f.netns(), [b.nic.ip]);
  const mine = flows.filter((x) => x.proto === "tcp" && x.original.dport === 5002);
  assert.equal(mine.length, 1, JSON.stringify(flows));
  assert.equal(mine[0]!.state, "ESTABLISHED");
  assert.equal(mine[0]!.original.src, a.nic.ip);
  assert.deepEqual(await exportFlows(f.netns(), ["10.1.2.3"]), [], "the filter keeps only the given VMs' flows");

  // Control: without the state (what a target host without hand-over has) the connection is refused.
  await runCommand("ip", ["netns", "exec", f.sw.name, "conntrack", "-F"]);
  assert.equal(await c.echo("three", 1500), false, "after the flush the firewall drops the connection");

  const report = await importFlows(f.netns(), mine);
  assert.deepEqual(report, { carried: 1, failed: [] });
  const ok3 = await c.echo("three", 8000);
  assert.ok(ok3, "after the import the same connection continues (the retransmission gets through)");
  assert.ok(await c.echo("four", 3000));
  // The control's refused packets are what the firewall saw as new (no state) and dropped.
  const table = (await runCommand("ip", ["netns", "exec", f.sw.name, "nft", "list", "table", "inet", "vt_test"])).stdout;
  const dropped = Number(/ct state new counter packets (\d+)/.exec(table)?.[1]);
  assert.ok(dropped > 0, table);

  const failed = await importFlows(f.netns(), [{ ...mine[0]!, original: { ...mine[0]!.original, src: "10.99.0.250" } }, mine[0]!]);
  assert.equal(failed.carried, 0, "the same flow twice and a mismatched one are refused by the kernel");
  assert.equal(failed.failed.length, 2);
  assert.match(failed.failed[0]!.reason, /conntrack -I/);
});
