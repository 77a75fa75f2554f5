/**
 * The tiny guest's test fixtures (guest/README.md):
 *  - vigil_sct, the module that plays a syscall-table rootkit from INSIDE the guest: loaded through the agent
 *    (`sct-write 62 __x64_sys_getpid`), a watched VM reports it as a `syscall-table` finding naming kill and
 *    getpid; `sct-restore` puts the entry back and the finding clears.
 *  - the agent on an ISA serial port (`vigil.agent=ttyS1`, what a recording VM uses: QEMU records only
 *    `-serial` chardevs): QEMU is started here by hand with no virtio-serial at all and the agent chardev as
 *    COM2, and the host's unchanged AgentClient talks to it: ping, exec, ps, and exec output of 64 KiB and more.
 *    Without a valid `vigil.agent=` the agent stays on the virtio port.
 */
import { test, type TestContext } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { BIN, ROOT, requireTinyImage, startDaemon, waitFor } from "../harness.ts";
import { detectAccelerator } from "../../src/qemu/accel.ts";
import { AgentClient } from "../../src/guest-agent/agent-client.ts";
import { lastSeq, until, waitFinding, watchOf } from "../../src/introspection/testing/watch-api.ts";

type Exec = { exitCode: number; stdout: string; stderr: string; truncated: boolean };
type Finding = { seq: number; check: string; severity: string; message: string; evidence: Record<string, unknown> };
const text = (b64: string): string => Buffer.from(b64, "base64").toString();

function tinyDir(): string {
  requireTinyImage();
  const r = spawnSync("bash", [join(ROOT, "guest", "build-tiny.sh"), "--print-dir"], { encoding: "utf8" });
  return r.stdout.trim();
}

test("vigil_sct loaded inside the guest is a syscall-table finding naming kill and getpid; sct-restore clears it", { timeout: 600_000 }, async (t) => {
  requireTinyImage();
  const d = await startDaemon(t);
  const vm = "rooted";
  await d.api("POST", "/v1/vms", { name: vm, memoryMiB: 256, vcpus: 1 });
  await d.api("POST", `/v1/vms/${vm}/start`, { wait: true });

  // `vigil watch VM` starts the watch and follows its findings.
  const follower = spawn(process.execPath, [BIN, "watch", vm, "--interval", "1s"], { env: d.env, stdio: ["ignore", "pipe", "pipe"] });
  t.after(() => follower.kill("SIGKILL"));
  let followed = "";
  follower.stdout.on("data", (b: Buffer) => (followed += b.toString()));
  await until(`${vm} watched`, 120_000, async () => {
    const w = await watchOf(d, vm).catch(() => undefined);
    return w && w.status === "watching" && w.sweeps >= 2 ? w : undefined;
  });
  const exec = (argv: string[]) => d.api<Exec>("POST", `/v1/vms/${vm}/guest/exec`, { argv });

  // Bad arguments are refused by the helper before anything is loaded.
  const bad = await exec(["sct-write", "62", "no-such-symbol"]);
  assert.equal(bad.exitCode, 2);
  assert.match(text(bad.stderr), /SYMBOL must be a kernel symbol name/);

  const after = await lastSeq(d);
  const w = await exec(["sct-write", "62", "__x64_sys_getpid"]);
  assert.equal(w.exitCode, 0, text(w.stderr));
  assert.equal(text(w.stdout), "sys_call_table[62] -> __x64_sys_getpid\n");
  const f = (await waitFinding(d, vm, "syscall-table", after)) as Finding;
  assert.equal(f.severity, "critical");
  assert.deepEqual(f.evidence.syscall, { number: 62, name: "kill" });
  assert.match(String(f.evidence.symbol), /__x64_sys_kill/);
  // __x64_sys_getpid may share its address with an alias (__do_sys_getpid): the name says getpid, and the
  // addresses are the ones the module itself logged.
  assert.match(String(f.evidence.foundSymbol), /getpid/);
  const log = await exec(["dmesg-grep", "vigil_sct:"]);
  const m = /vigil_sct: sys_call_table\[62\] ([0-9a-f]{16}) -> ([0-9a-f]{16}) \(__x64_sys_getpid\)/.exec(text(log.stdout));
  assert.ok(m, text(log.stdout));
  assert.equal(f.evidence.expected, `0x${m[1]}`);
  assert.equal(f.evidence.found, `0x${m[2]}`);
  assert.match(f.message, /kill/);
  assert.match(f.message, /getpid/);
  await waitFor(() => /CRITICAL\s+syscall-table/.test(followed), 20_000, "vigil watch to print the finding");

  // Loaded twice is refused (the saved entry would be the rootkit's own).
  const again = await exec(["sct-write", "62", "__x64_sys_getpid"]);
  assert.equal(again.exitCode, 1);
  assert.match(text(again.stderr), /already loaded/);

  const r = await exec(["sct-restore"]);
  assert.equal(r.exitCode, 0, text(r.stderr));
  assert.equal(text(r.stdout), "sys_call_table restored\n");
  await until("the syscall-table finding to clear", 30_000, async () => {
    const { active } = await d.api<{ active: Finding[] }>("GET", `/v1/vms/${vm}/findings?limit=100`);
    return active.some((x) => x.check === "syscall-table") ? undefined : true;
  });
  const { recent } = await d.api<{ recent: Finding[] }>("GET", `/v1/vms/${vm}/findings?limit=100`);
  t.diagnostic(`findings on the way: ${[...new Set(recent.map((x) => `${x.check}/${x.severity}`))].join(", ")}`);
  follower.kill("SIGINT");
});

/** Starts QEMU by hand on the tiny image (no vigil): console on COM1, the agent chardev on COM2 (`serial`) or on
 * a virtio-serial port (`virtio`), no disk, no NIC; returns the agent socket and the console log's path. */
async function bootByHand(t: TestContext, agent: "serial" | "virtio", append: string): Promise<{ agentSock: string; consoleLog: string; image: string }> {
  const image = tinyDir();
  const dir = mkdtempSync(join(tmpdir(), "vigil-ttys1-"));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const agentSock = join(dir, "agent.sock");
  const consoleLog = join(dir, "console.log");
  const accel = detectAccelerator().accel;
  const agentArgs = agent === "serial" ? ["-serial", "chardev:agent0"] : ["-device", "virtio-serial-pci", "-device", "virtserialport,chardev=agent0,name=org.vigil.agent.0"];
  const qemu = spawn(
    "nice",
    [
      "qemu-system-x86_64",
      "-nodefaults",
      "-no-user-config",
      "-machine",
      `pc-i440fx-7.2,accel=${accel}`,
      "-cpu",
      "max",
      "-smp",
      "1",
      "-m",
      "256M",
      "-display",
      "none",
      "-chardev",
      `socket,id=serial0,path=${join(dir, "serial.sock")},server=on,wait=off,logfile=${consoleLog}`,
      "-serial",
      "chardev:serial0",
      "-chardev",
      `socket,id=agent0,path=${agentSock},server=on,wait=off`,
      ...agentArgs,
      "-kernel",
      join(image, "vmlinuz"),
      "-initrd",
      join(image, "initrd.img"),
      "-append",
      `console=ttyS0 quiet panic=-1 ${append}`,
      "-net",
      "none",
    ],
    { stdio: ["ignore", "ignore", "pipe"] },
  );
  let qemuErr = "";
  qemu.stderr.on("data", (b: Buffer) => (qemuErr += b.toString()));
  t.after(() => void qemu.kill("SIGKILL"));
  await waitFor(() => existsSync(agentSock) || qemu.exitCode !== null, 30_000, "QEMU's agent socket");
  assert.equal(qemu.exitCode, null, qemuErr);
  return { agentSock, consoleLog, image };
}

test("the agent over ttyS1 (no virtio-serial): ping, exec, ps and 64 KiB of binary exec output through AgentClient", { timeout: 300_000 }, async (t) => {
  const { agentSock, consoleLog, image } = await bootByHand(t, "serial", "vigil.hostname=on-ttys1 vigil.agent=ttyS1");
  const c = await AgentClient.connect(agentSock);
  t.after(() => c.close());
  await c.waitUntilAnswering(180_000);
  assert.deepEqual(await c.ping(), { pong: true });

  const info = await c.info();
  assert.equal(info.hostname, "on-ttys1");
  const name = await c.exec(["uname", "-n"]);
  assert.deepEqual({ ...name, stdout: text(name.stdout) }, { exitCode: 0, stdout: "on-ttys1\n", stderr: "", truncated: false });
  const refused = await c.exec(["echo", "hi"]).then(
    () => "answered",
    (e: Error) => e.message,
  );
  assert.match(refused, /"echo" is not allowed/);

  const ps = await c.ps();
  assert.ok(ps.processes.some((p) => p.pid === 1 && p.ppid === 0));
  assert.ok(ps.processes.some((p) => p.comm === "agent.sh"), JSON.stringify(ps.processes.map((p) => p.comm)));

  // Binary output: busybox's first 64 KiB, byte for byte (compared with the image's own initramfs), and
  // output past the 64 KiB cap comes back cut to 64 KiB and flagged.
  const cpio = spawnSync("sh", ["-c", `gzip -dc "$1" | cpio -i --quiet --to-stdout bin/busybox`, "sh", join(image, "initrd.img")], { maxBuffer: 64 << 20 });
  assert.equal(cpio.status, 0, cpio.stderr.toString());
  const busybox = cpio.stdout;
  assert.ok(busybox.length > 1 << 20);
  const exact = await c.exec(["head", "-c", "65536", "/bin/busybox"]);
  assert.equal(exact.exitCode, 0, text(exact.stderr));
  assert.equal(exact.truncated, false);
  assert.ok(Buffer.from(exact.stdout, "base64").equals(busybox.subarray(0, 65536)), "the 64 KiB came through unchanged");
  // The agent's file-size limit stops the command a little past the cap (SIGXFSZ: exit 128 + 25).
  const long = await c.exec(["head", "-c", "200000", "/bin/busybox"]);
  assert.equal(long.exitCode, 153, text(long.stderr));
  assert.equal(long.truncated, true);
  assert.ok(Buffer.from(long.stdout, "base64").equals(busybox.subarray(0, 65536)));
  // The channel is still in step after the long lines.
  assert.deepEqual(await c.ping(), { pong: true });
  assert.match(readFileSync(consoleLog, "utf8"), /vigil-init: ready/);
});

test("without a valid vigil.agent the agent stays on virtio-serial (ttyS0, the console, is refused and logged)", { timeout: 300_000 }, async (t) => {
  const { agentSock } = await bootByHand(t, "virtio", "vigil.agent=ttyS0");
  const c = await AgentClient.connect(agentSock);
  t.after(() => c.close());
  await c.waitUntilAnswering(180_000);
  assert.deepEqual(await c.ping(), { pong: true });
  const log = await c.exec(["cat", "/run/vigil/agent.log"]);
  assert.match(text(log.stdout), /ignoring invalid vigil\.agent \(allowed: ttyS1 to ttyS9\)/);
});
