import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { test } from "node:test";
import { VigilError } from "../errors.ts";
import { runCommand } from "../util/run-command.ts";
import { mirrorToIds } from "./ids-tap.ts";
import { VisFixture, echoServer, inVm } from "./vis-fixture.ts";

test("a NIC mirrored to an IDS interface copies its traffic there for the window only, then leaves no filter", async (t) => {
  const f = await VisFixture.create(2);
  t.after(() => f.close());
  const [a, b] = [f.vm("vm0"), f.vm("vm1")];
  const server = await echoServer(b, 5011);
  t.after(() => server.kill("SIGKILL"));
  // The "IDS": a veth pair in the switch's netns; the IDS reads the far end.
  await f.ip(f.sw, "link", "add", "ids0", "type", "veth", "peer", "name", "ids1");
  await f.ip(f.sw, "link", "set", "ids0", "up");
  await f.ip(f.sw, "link", "set", "ids1", "up");
  const dump = spawn("ip", ["netns", "exec", f.sw.name, "tcpdump", "-i", "ids1", "-n", "-l", "-A", "tcp"], { stdio: ["ignore", "pipe", "pipe"] });
  t.after(() => dump.kill("SIGKILL"));
  let seen = "";
  dump.stdout.on("data", (d: Buffer) => (seen += d.toString()));
  await new Promise<void>((resolve) => dump.stderr.on("data", (d: Buffer) => d.toString().includes("listening") && resolve()));

  const window = mirrorToIds(f.netns(), a.nic.tap, "ids0", 2000);
  await new Promise((r) => setTimeout(r, 400));
  const filters = (await runCommand("ip", ["netns", "exec", f.sw.name, "tc", "filter", "show", "dev", a.nic.tap, "ingress"])).stdout;
  assert.match(filters, /mirred \(Egress Mirror to device ids0\)/);
  await inVm(a, ["busybox", "nc", "-w", "1", b.nic.ip, "5011"], `ids-inside-${f.id}\n`);
  await window;
  await inVm(a, ["busybox", "nc", "-w", "1", b.nic.ip, "5011"], `ids-after-${f.id}\n`);
  await new Promise((r) => setTimeout(r, 500));
  assert.ok(seen.includes(`ids-inside-${f.id}`), "traffic in the window reached the IDS interface");
  assert.ok(!seen.includes(`ids-after-${f.id}`), "traffic after the window did not");
  for (const dir of ["ingress", "egress"]) assert.equal((await runCommand("ip", ["netns", "exec", f.sw.name, "tc", "filter", "show", "dev", a.nic.tap, dir])).stdout.trim(), "");
  assert.doesNotMatch((await runCommand("ip", ["netns", "exec", f.sw.name, "tc", "qdisc", "show", "dev", a.nic.tap])).stdout, /clsact/, "the qdisc vigil added is gone");

  // Never into another VM's tap, a bridge, or something that is not there.
  await assert.rejects(mirrorToIds(f.netns(), a.nic.tap, b.nic.tap, 1000), (e: VigilError) => e.field === "toIds" && /vigil tap or bridge/.test(e.message));
  await assert.rejects(mirrorToIds(f.netns(), a.nic.tap, "vb-visnet", 1000), /vigil tap or bridge/);
  await assert.rejects(mirrorToIds(f.netns(), a.nic.tap, "nosuch0", 1000), /no such interface/);
  await assert.rejects(mirrorToIds(f.netns(), a.nic.tap, "ids0", 5), (e: VigilError) => e.field === "duration");
});
