/**
 * Imported images and the interactive serial console, with real QEMU.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { upgrade } from "../../src/cli/client.ts";
import { requireTinyImage, startDaemon, waitFor } from "../harness.ts";
import { ConsoleShell } from "../../src/introspection/testing/live-guest.ts";

test("the serial console is an interactive shell in the guest", { timeout: 120_000 }, async (t) => {
  requireTinyImage();
  const d = await startDaemon(t);
  await d.api("POST", "/v1/vms", { name: "con", memoryMiB: 128 });
  await d.api("POST", "/v1/vms/con/start", { wait: true });
  const socket = await upgrade("/v1/vms/con/console", d.target);
  t.after(() => socket.destroy());
  let seen = "";
  socket.on("data", (b: Buffer) => (seen += b.toString()));
  const marker = `hello-${process.pid}`;
  // The shell may not have printed a prompt yet: keep asking until the answer shows up.
  await waitFor(() => {
    socket.write(`echo ${marker}-$((6*7))\n`);
    return seen.includes(`${marker}-42`);
  }, 30_000, "the console to answer");
  const denied = await upgrade("/v1/vms/nope/console", d.target).catch((e: Error) => e);
  assert.match(String(denied), /does not exist/);
});

test("a guest flooding its serial console cannot grow console.log past the cap; the log's tail is the newest output", { timeout: 180_000 }, async (t) => {
  requireTinyImage();
  const cap = 64 * 1024;
  const d = await startDaemon(t, { config: { consoleLog: { maxBytes: cap } } });
  const vm = await d.api<{ paths: { consoleLog: string } }>("POST", "/v1/vms", { name: "loud", memoryMiB: 128 });
  await d.api("POST", "/v1/vms/loud/start", { wait: true });
  const shell = await ConsoleShell.open("loud", d.target);
  t.after(() => shell.close());
  const log = vm.paths.consoleLog;
  const size = (p: string) => (existsSync(p) ? statSync(p).size : 0);
  let peak = 0;
  const sampler = setInterval(() => (peak = Math.max(peak, size(log))), 20);
  t.after(() => clearInterval(sampler));
  // 640 KiB of output through the emulated UART (10 times the cap; below ConsoleShell's 1 MB buffer), then a line.
  await shell.run("head -c 655360 /dev/zero | tr '\\0' x; echo; echo flood-$((40+2))-done", 150_000);
  clearInterval(sampler);
  const tail = d.cli("vm", "console", "loud", "--log", "--bytes", "4096");
  assert.equal(tail.status, 0, tail.stderr);
  assert.match(tail.stdout, /x{100}\s*flood-42-done/, "the tail is the newest output");
  t.diagnostic(`console.log peaked at ${peak} bytes; now ${size(log)} + ${size(`${log}.1`)} in console.log.1`);
  assert.equal(size(`${log}.1`), cap, "console.log.1 holds exactly the cap");
  assert.ok(peak <= 2 * cap, `console.log peaked at ${peak} bytes (cap ${cap})`);
  assert.ok(size(log) + size(`${log}.1`) <= 3 * cap);
  const where = await d.api<{ live: Array<{ path: string; purpose: string }> }>("GET", "/v1/vms/loud/where");
  assert.ok(where.live.some((f) => f.path === `${log}.1` && f.purpose === "console-log"), "the backup is registered guest data");
});

test("a disk is imported as an image: standalone qcow2 or raw only; VMs built on it keep it", { timeout: 120_000 }, async (t) => {
  requireTinyImage();
  const d = await startDaemon(t);
  const raw = join(d.home, "disk.raw");
  writeFileSync(raw, Buffer.alloc(8 * 1024 * 1024, 0x5a));
  const imp = d.cli("image", "import", raw, "--name", "appliance", "--description", "an appliance disk", "--json");
  assert.equal(imp.status, 0, imp.stderr);
  const img = JSON.parse(imp.stdout) as { kind: string; details: { virtualSize: number; sha256: string } };
  assert.equal(img.kind, "imported");
  assert.equal(img.details.virtualSize, 8 * 1024 * 1024);

  // A qcow2 that names a backing file would make QEMU read a host file: refused.
  const evil = join(d.home, "evil.qcow2");
  spawnSync("qemu-img", ["create", "-q", "-f", "qcow2", "-F", "raw", "-b", "/etc/shadow", evil, "8M"]);
  const refused = d.cli("image", "import", evil, "--name", "evil");
  assert.equal(refused.status, 2);
  assert.match(refused.stderr, /names an unexpected backing file "\/etc\/shadow"/);

  const vm = await d.api<{ spec: { boot: { kind: string } } }>("POST", "/v1/vms", { name: "app1", image: "appliance", memoryMiB: 128, nics: [] });
  assert.equal(vm.spec.boot.kind, "disk");
  const started = await d.api<{ state: string }>("POST", "/v1/vms/app1/start", {});
  assert.equal(started.state, "running", "QEMU boots the firmware from the imported disk");
  await d.api("POST", "/v1/vms/app1/kill");
  await assert.rejects(d.api("DELETE", "/v1/images/appliance"), /VMs are built on it \(app1\)/);
  await d.api("DELETE", "/v1/vms/app1");
  await d.api("DELETE", "/v1/images/appliance");
  const { images } = await d.api<{ images: Array<{ name: string; kind: string }> }>("GET", "/v1/images");
  // Only the built-in images are left (tiny, and debian-12 where set-up built it).
  assert.deepEqual(images.filter((i) => i.kind !== "builtin").map((i) => i.name), []);
  assert.ok(images.some((i) => i.name === "tiny"));
});
