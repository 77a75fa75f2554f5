import assert from "node:assert/strict";
import { test } from "node:test";
import { runCommand } from "../util/run-command.ts";
import { parseLinkStats, readCounters } from "./counters.ts";
import { VisFixture, echoServer, inVm } from "./vis-fixture.ts";

const sample = (over: Record<string, unknown> = {}) =>
  JSON.stringify([{ ifname: "vt-0123456789", stats64: { rx: { bytes: 10, packets: 2, errors: 0, dropped: 1 }, tx: { bytes: 20, packets: 3, errors: 0, dropped: 0 } }, ...over }]);

test("parseLinkStats reads ip -s -j output and refuses anything else", () => {
  assert.deepEqual(parseLinkStats(sample(), "vt-0123456789"), { rx: { bytes: 10, packets: 2, errors: 0, dropped: 1 }, tx: { bytes: 20, packets: 3, errors: 0, dropped: 0 } });
  assert.throws(() => parseLinkStats(sample(), "vt-9999999999"), /not "vt-9999999999"/);
  assert.throws(() => parseLinkStats("not json", "vt-0123456789"), /did not print JSON/);
  assert.throws(() => parseLinkStats("[]", "vt-0123456789"), /expected one link/);
  assert.throws(() => parseLinkStats(sample({ stats64: undefined }), "vt-0123456789"), /stats64 is missing/);
  assert.throws(() => parseLinkStats(sample({ stats64: { rx: { bytes: -1, packets: 0, errors: 0, dropped: 0 }, tx: {} } }), "vt-0123456789"), /stats64.rx.bytes/);
  assert.throws(() => parseLinkStats(sample({ stats64: { rx: { bytes: "1", packets: 0, errors: 0, dropped: 0 }, tx: {} } }), "vt-0123456789"), /not a non-negative integer/);
  assert.throws(() => parseLinkStats(" ".repeat(70_000), "vt-0123456789"), /at most/);
});

test("readCounters sees the bytes one test VM sent another, as the kernel counts them", async (t) => {
  const f = await VisFixture.create(2);
  t.after(() => f.close());
  const [a, b] = [f.vm("vm0"), f.vm("vm1")];
  const server = await echoServer(b, 5001);
  t.after(() => server.kill("SIGKILL"));
  const before = await readCounters(f.netns(), [a.nic, b.nic]);
  const payload = "x".repeat(200_000);
  const r = await inVm(a, ["busybox", "nc", "-w", "2", b.nic.ip, "5001"], payload);
  assert.equal(r.stdout.length, payload.length, "the echo came back whole");
  const after = await readCounters(f.netns(), [a.nic, b.nic]);
  const [a0, b0, a1, b1] = [before[0]!, before[1]!, after[0]!, after[1]!];
  // vm0 sent the payload (its port received it), vm1 was delivered it and echoed it back.
  assert.ok(a1.rx.bytes - a0.rx.bytes >= payload.length, `vm0 port rx grew by ${a1.rx.bytes - a0.rx.bytes}`);
  assert.ok(b1.tx.bytes - b0.tx.bytes >= payload.length);
  assert.ok(b1.rx.bytes - b0.rx.bytes >= payload.length);
  assert.ok(a1.tx.bytes - a0.tx.bytes >= payload.length);
  assert.ok(a1.rx.packets > a0.rx.packets);
  assert.equal(a1.tap, a.nic.tap);
  // Cross-check with sysfs read inside the switch's netns (same kernel counter, other interface).
  const sys = await runCommand("ip", ["netns", "exec", f.sw.name, "cat", `/sys/class/net/${a.nic.tap}/statistics/rx_bytes`]);
  const again = await readCounters(f.netns(), [a.nic]);
  assert.ok(Math.abs(Number(sys.stdout.trim()) - again[0]!.rx.bytes) < 2_000, `sysfs ${sys.stdout.trim()} vs ${again[0]!.rx.bytes}`);
});
