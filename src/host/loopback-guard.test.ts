/**
 * The loopback guard on this host's real nftables (needs root and nft, as the daemon does): with the table in
 * place, a process running as a VM uid cannot connect to a listener on 127.0.0.1 (nor ::1) while root can;
 * installing twice leaves one table; a missing nft is a clear error. Only loopback carries test traffic.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { createServer, type AddressInfo } from "node:net";
import { GUARD_TABLE, installLoopbackGuard, listLoopbackGuard } from "./loopback-guard.ts";
import { VM_UID_BASE, VM_UID_COUNT } from "./vm-uid-range.ts";

/** Tries a TCP connect to host:port as `uid` (setpriv, no supplementary groups); "connected" or the error code. */
function connectAs(uid: number | undefined, host: string, port: number): string {
  const script = `const s=require("net").connect({host:${JSON.stringify(host)},port:${port}});s.setTimeout(1500,()=>{console.log("ETIMEDOUT");process.exit(0)});s.on("connect",()=>{console.log("connected");process.exit(0)});s.on("error",(e)=>{console.log(e.code);process.exit(0)});`;
  const argv = uid === undefined ? [process.execPath, "-e", script] : ["setpriv", `--reuid=${uid}`, `--regid=${uid}`, "--clear-groups", process.execPath, "-e", script];
  const r = spawnSync(argv[0]!, argv.slice(1), { encoding: "utf8", timeout: 20_000 });
  assert.equal(r.status, 0, r.stderr);
  return r.stdout.trim();
}

async function listener(host: string): Promise<{ port: number; close: () => void }> {
  const server = createServer((s) => s.end());
  await new Promise<void>((resolve) => server.listen(0, host, resolve));
  return { port: (server.address() as AddressInfo).port, close: () => server.close() };
}

test("with the guard installed a VM uid cannot reach 127.0.0.1 or ::1; root and other uids still can", async (t) => {
  await installLoopbackGuard();
  const v4 = await listener("127.0.0.1");
  t.after(v4.close);
  const v6 = await listener("::1");
  t.after(v6.close);
  const vmUid = VM_UID_BASE + 4242;
  assert.equal(connectAs(undefined, "127.0.0.1", v4.port), "connected", "root reaches the listener");
  assert.equal(connectAs(65534, "127.0.0.1", v4.port), "connected", "an ordinary uid (nobody) is not affected");
  assert.equal(connectAs(vmUid, "127.0.0.1", v4.port), "ETIMEDOUT", "a VM uid's packets to loopback are dropped");
  assert.equal(connectAs(VM_UID_BASE, "127.0.0.2", v4.port), "ETIMEDOUT", "the first VM uid, all of 127.0.0.0/8");
  assert.equal(connectAs(VM_UID_BASE + VM_UID_COUNT - 1, "::1", v6.port), "ETIMEDOUT", "the last VM uid, ::1");
  assert.equal(connectAs(VM_UID_BASE + VM_UID_COUNT, "127.0.0.1", v4.port), "connected", "the uid after the range is not a VM uid");
});

test("installing the guard twice replaces it atomically: one table, one set of rules", async () => {
  await installLoopbackGuard();
  await installLoopbackGuard();
  const listed = await listLoopbackGuard();
  assert.equal(listed.match(new RegExp(`table inet ${GUARD_TABLE}`, "g"))?.length, 1);
  assert.equal(listed.match(/oif "lo"/g)?.length, 1, listed);
  assert.match(listed, new RegExp(`meta skuid ${VM_UID_BASE}-${VM_UID_BASE + VM_UID_COUNT - 1}`));
});

test("without nft the guard fails with a clear error", async (t) => {
  const old = process.env.VIGIL_NFT;
  process.env.VIGIL_NFT = "/nonexistent/nft";
  t.after(() => (old === undefined ? delete process.env.VIGIL_NFT : (process.env.VIGIL_NFT = old)));
  await assert.rejects(installLoopbackGuard(), (e: Error & { code?: string }) => e.code === "VIGIL_HOST" && /\/nonexistent\/nft is not installed \(Debian package nftables\)/.test(e.message));
});
