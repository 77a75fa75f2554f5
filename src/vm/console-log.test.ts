/**
 * `GET /v1/vms/NAME/console-log` through the daemon, without QEMU: the tail of a huge console.log (3 GiB,
 * sparse) comes back without reading the file whole, and spans console.log.1 after a rotation; the cap is
 * configurable in config.json and refuses nonsense.
 */
import { test, type TestContext } from "node:test";
import assert from "node:assert/strict";
import { closeSync, ftruncateSync, mkdirSync, mkdtempSync, openSync, rmSync, writeFileSync, writeSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { loadConfig } from "../config.ts";
import { startDaemon, type Daemon } from "../daemon/daemon.ts";
import { silentLogger } from "../log.ts";
import { vmLayout } from "../paths.ts";
import { createVmRequestSchema, resolveSpec } from "./spec.ts";

async function daemonWithVm(t: TestContext): Promise<{ daemon: Daemon; home: string; consoleLog: string }> {
  const home = mkdtempSync(join(tmpdir(), "vigil-console-"));
  const daemon = await startDaemon({ home, cache: join(home, "no-cache"), listen: "none", log: silentLogger() });
  t.after(async () => {
    await daemon.close();
    rmSync(home, { recursive: true, force: true });
  });
  const spec = resolveSpec(createVmRequestSchema.parse({ name: "loud", memoryMiB: 128 }), { name: "tiny", boot: { kind: "kernel", kernel: "/k", initrd: "/i", cmdline: "" }, disk: "/d" }, { cpu: "max" });
  const vm = await daemon.repo.insert({ id: crypto.randomUUID(), name: "loud", spec, state: "stopped", host: "h", vmgenid: crypto.randomUUID(), generation: 1, owner: "user:root", approver: null, purpose: null, expiresAt: null, labels: {}, lineage: { kind: "image", image: "tiny" }, isTemplate: false, createdBy: "root", createdAt: new Date().toISOString() });
  const l = vmLayout(join(home, "vms"), vm.id);
  mkdirSync(l.dir, { recursive: true, mode: 0o700 });
  return { daemon, home, consoleLog: l.consoleLog };
}

const consoleLog = async (daemon: Daemon, bytes: number): Promise<{ status: number; text: string }> => {
  const res = await daemon.app.request(`/v1/vms/loud/console-log?bytes=${bytes}`, { method: "GET" }, { transport: "unix" });
  return { status: res.status, text: await res.text() };
};

test("the console log of a 3 GiB console.log is its tail, read without reading the file", async (t) => {
  const { daemon, consoleLog: path } = await daemonWithVm(t);
  const fd = openSync(path, "w", 0o600);
  ftruncateSync(fd, 3 * 1024 * 1024 * 1024);
  const end = Buffer.from("login: ");
  writeSync(fd, end, 0, end.length, 3 * 1024 * 1024 * 1024);
  closeSync(fd);
  const r = await consoleLog(daemon, 4096);
  assert.equal(r.status, 200, r.text);
  assert.equal(r.text.length, 4096);
  assert.ok(r.text.endsWith("login: "));
});

test("after a rotation the console log spans console.log.1 and console.log", async (t) => {
  const { daemon, consoleLog: path } = await daemonWithVm(t);
  writeFileSync(`${path}.1`, "older output\n");
  writeFileSync(path, "newer output\n");
  const r = await consoleLog(daemon, 1024);
  assert.equal(r.text, "older output\nnewer output\n");
  assert.equal((await consoleLog(daemon, 13)).text, "newer output\n");
});

test("the console log cap is set in config.json (default 1 MiB) and bounded", (t) => {
  const home = mkdtempSync(join(tmpdir(), "vigil-console-config-"));
  t.after(() => rmSync(home, { recursive: true, force: true }));
  assert.equal(loadConfig(home).consoleLog.maxBytes, 1024 * 1024);
  writeFileSync(join(home, "config.json"), JSON.stringify({ consoleLog: { maxBytes: 4 * 1024 * 1024 } }));
  assert.equal(loadConfig(home).consoleLog.maxBytes, 4 * 1024 * 1024);
  writeFileSync(join(home, "config.json"), JSON.stringify({ consoleLog: { maxBytes: 10 } }));
  assert.throws(() => loadConfig(home), /consoleLog\.maxBytes/);
});
