/**
 * The foundation end to end, with real QEMU under TCG: create → start --wait → the guest's own ps shows its init
 * → pause/resume → stop; the daemon killed -9 with two VMs running and restarted finds both; a QEMU killed -9
 * is marked crashed; bad specs leave nothing behind.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { closeSync, existsSync, fstatSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { requireTinyImage, startDaemon, waitFor } from "../harness.ts";
import { openGuestRam } from "../../src/host/guest-ram.ts";
import { guestRamBytes } from "../../src/qemu/argv.ts";

type Vm = { id: string; name: string; state: string; pid: number | null; accelerator: string; vmgenid: string; paths: { dir: string } };

test("a VM's whole life through the CLI", { timeout: 300_000 }, async (t) => {
  requireTinyImage();
  const d = await startDaemon(t);
  const created = d.cli("vm", "create", "demo", "--image", "tiny", "--memory", "256", "--vcpus", "1", "--json");
  assert.equal(created.status, 0, created.stderr);
  const vm = JSON.parse(created.stdout) as Vm;
  assert.equal(vm.state, "stopped");
  assert.match(vm.vmgenid, /^[0-9a-f-]{36}$/);

  const started = d.cli("vm", "start", "demo", "--wait", "--json");
  assert.equal(started.status, 0, started.stderr + d.log());
  const running = JSON.parse(started.stdout) as Vm;
  assert.equal(running.state, "running");
  assert.equal(running.accelerator, "tcg");
  assert.ok(running.pid && running.pid > 1);
  // Guest RAM is QEMU's memfd, reachable only through its descriptor; nothing of it is in the VM's directory.
  // (256 MiB less 8 KiB under TCG: qemu/argv.ts guestRamBytes)
  const ramFd = openGuestRam(running.pid, guestRamBytes(256, "tcg"));
  assert.equal(fstatSync(ramFd).size, 256 * 1024 * 1024 - 8192);
  closeSync(ramFd);
  assert.equal(existsSync(join(running.paths.dir, "mem")), false, "no RAM file next to the disks");

  const ps = JSON.parse(d.cli("vm", "ps", "demo", "--json").stdout) as { processes: Array<{ pid: number; comm: string }> };
  const init = ps.processes.find((p) => p.pid === 1);
  assert.ok(init, "the guest's ps lists pid 1");
  assert.match(init.comm, /init|sh/);

  const list = JSON.parse(d.cli("vm", "list", "--json").stdout) as Vm[];
  assert.deepEqual(list.map((v) => [v.name, v.state, v.accelerator, v.vmgenid]), [["demo", "running", "tcg", vm.vmgenid]]);

  assert.equal(d.cli("vm", "pause", "demo").status, 0);
  assert.equal(d.cli("vm", "status", "demo").stdout.trim(), "paused");
  const illegal = d.cli("vm", "pause", "demo");
  assert.equal(illegal.status, 4);
  assert.match(illegal.stderr, /Cannot pause VM "demo": it is paused \(allowed when running\)/);
  assert.equal(d.cli("vm", "resume", "demo").status, 0);
  assert.equal(d.cli("vm", "status", "demo").stdout.trim(), "running");

  const info = JSON.parse(d.cli("vm", "info", "demo", "--json").stdout) as { kernel: string };
  assert.match(info.kernel, /cloud-amd64/);

  const stopped = d.cli("vm", "stop", "demo", "--json");
  assert.equal(stopped.status, 0, stopped.stderr);
  assert.equal((JSON.parse(stopped.stdout) as { how: string }).how, "acpi", "the guest powers off on the ACPI button");
  assert.equal(d.cli("vm", "status", "demo").stdout.trim(), "stopped");
  assert.throws(() => openGuestRam(running.pid!, 256 * 1024 * 1024), /Cannot open guest RAM/, "guest RAM went with the process");

  const console = d.cli("vm", "console", "demo", "--log");
  assert.match(console.stdout, /vigil-init: ready/);

  assert.equal(d.cli("vm", "destroy", "demo").status, 0);
  assert.equal(existsSync(vm.paths.dir), false);
  assert.equal(d.cli("vm", "show", "demo").status, 3);

  const history = d.cli("vm", "history", "demo", "--json");
  assert.equal(history.status, 0, history.stderr);
  const actions = (JSON.parse(history.stdout) as { events: Array<{ action: string; actor: string; result: string }> }).events.filter((e) => e.result === "ok").map((e) => e.action);
  assert.deepEqual(actions, ["vm.create", "vm.start", "vm.pause", "vm.resume", "vm.stop", "vm.destroy"]);
});

test("the daemon dies (kill -9) with two VMs running; a restart reattaches both", { timeout: 300_000 }, async (t) => {
  requireTinyImage();
  const d = await startDaemon(t);
  for (const name of ["a1", "a2"]) {
    assert.equal(d.cli("vm", "create", name, "--memory", "128").status, 0);
  }
  // Start both at once: operations on different VMs run side by side.
  const starts = await Promise.all(["a1", "a2"].map((n) => d.api<Vm>("POST", `/v1/vms/${n}/start`, { wait: true })));
  const pids = starts.map((v) => v.pid);
  await d.kill9();
  for (const pid of pids) assert.doesNotThrow(() => process.kill(pid!, 0), "QEMU survives the daemon");
  await d.restart();
  for (const [i, name] of ["a1", "a2"].entries()) {
    const v = await d.api<Vm>("GET", `/v1/vms/${name}`);
    assert.equal(v.state, "running");
    assert.equal(v.pid, pids[i], "the same QEMU, not a new one");
    const ps = await d.api<{ processes: unknown[] }>("GET", `/v1/vms/${name}/guest/ps`);
    assert.ok(ps.processes.length > 0, "its agent still answers");
  }
  assert.match(d.log(), /"reattached":\["a1","a2"\]/);
});

test("a QEMU killed behind vigil's back is marked crashed, with an event", { timeout: 300_000 }, async (t) => {
  requireTinyImage();
  const d = await startDaemon(t);
  assert.equal(d.cli("vm", "create", "victim", "--memory", "128").status, 0);
  const v = await d.api<Vm>("POST", "/v1/vms/victim/start", {});
  process.kill(v.pid!, "SIGKILL");
  await waitFor(() => d.cli("vm", "status", "victim").stdout.trim() === "crashed", 20_000, "state crashed");
  const { records } = await d.api<{ records: Array<{ action: string; actor: string; target: { name: string } }> }>("GET", "/v1/audit?tail=true&limit=5");
  assert.ok(records.some((r) => r.action === "vm.crashed" && r.actor === "system" && r.target.name === "victim"));
  // A crashed VM can be started again.
  const again = await d.api<Vm>("POST", "/v1/vms/victim/start", {});
  assert.equal(again.state, "running");
  assert.equal((await d.api<Vm>("POST", "/v1/vms/victim/kill")).state, "stopped");
});

test("bad specs are rejected naming the field, leaving nothing on disk or in the inventory", { timeout: 60_000 }, async (t) => {
  requireTinyImage();
  const d = await startDaemon(t);
  const cases: Array<[unknown, RegExp, string]> = [
    [{ name: "ok1", memoryMiB: 8 }, /"memoryMiB" too small/, "memoryMiB"],
    [{ name: "ok2", vcpus: "two" }, /"vcpus" must be a number/, "vcpus"],
    [{ name: "ok3", disks: [{ name: "root", sizeMiB: 10 }] }, /disk/, "disks"],
    [{ name: "ok4", image: "nope" }, /Image "nope" does not exist/, "image"],
    [{ name: "ok5", colour: "blue" }, /unknown field "colour"/, "colour"],
    [{ name: "../etc" }, /"name" must be 1-63 characters/, "name"],
  ];
  for (const [body, message, field] of cases) {
    await assert.rejects(d.api("POST", "/v1/vms", body), (err: { message: string; field?: string; status: number }) => {
      assert.match(err.message, message);
      assert.ok(err.status === 400 || err.status === 404, String(err.status));
      assert.ok(err.field?.startsWith(field), `field ${err.field} for ${JSON.stringify(body)}`);
      return true;
    });
  }
  const { vms } = await d.api<{ vms: unknown[] }>("GET", "/v1/vms");
  assert.equal(vms.length, 0);
  const vmsDir = join(d.home, "vms");
  assert.deepEqual(existsSync(vmsDir) ? readdirSync(vmsDir) : [], []);
});
