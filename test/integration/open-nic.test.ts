/**
 * An open NIC (slirp, restrict=off) and the host's loopback: libslirp maps the gateway 10.0.2.2 to the host's
 * 127.0.0.1. With QEMU running as a VM uid (the jail), the loopback guard's nftables table (host/loopback-guard.ts)
 * drops those connections: the guest cannot reach a listener on the host's 127.0.0.1. The jail is not optional, so
 * a QEMU that is not a VM uid fails the test (VIGIL_JAIL=off is for the benchmarks' baseline only).
 * Only 127.0.0.1 and slirp's private network carry traffic.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { execFileSync } from "node:child_process";
import { GUARD_TABLE, installLoopbackGuard } from "../../src/host/loopback-guard.ts";
import { isVmUid } from "../../src/host/vm-uid-range.ts";
import { ConsoleShell } from "../../src/introspection/testing/live-guest.ts";
import { requireTinyImage, startDaemon } from "../harness.ts";

const uidOf = (pid: number): number => Number(/^Uid:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/status`, "utf8"))![1]);

test("a guest with an open NIC cannot reach the host's loopback (10.0.2.2) when QEMU runs as a VM uid", { timeout: 180_000 }, async (t) => {
  requireTinyImage();
  const server = createServer((_req, res) => res.end("host-loopback-reached\n"));
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  t.after(() => server.close());
  const port = (server.address() as AddressInfo).port;
  const d = await startDaemon(t);
  await d.api("POST", "/v1/vms", { name: "out", memoryMiB: 128, nics: [{ restrict: false }] });
  const vm = await d.api<{ pid: number }>("POST", "/v1/vms/out/start", { wait: true });
  const shell = await ConsoleShell.open("out", d.target);
  t.after(() => shell.close());
  // slirp's fixed addressing: the guest is 10.0.2.15, the gateway (the host) 10.0.2.2.
  // (replace: the guest's udhcpc may already have set exactly this from slirp's DHCP server)
  await shell.run("ip link set eth0 up && ip addr replace 10.0.2.15/24 dev eth0 && ip route replace default via 10.0.2.2", 20_000);
  const probe = () => shell.run(`printf "GET / HTTP/1.0\\r\\n\\r\\n" | nc -w 5 10.0.2.2 ${port} 2>&1; echo "nc-exit=$?"`, 30_000);
  assert.ok(isVmUid(uidOf(vm.pid)), `QEMU runs as a VM uid, not ${uidOf(vm.pid)}`);
  const out = await probe();
  assert.doesNotMatch(out, /host-loopback-reached/, "the guest must not reach a service on the host's 127.0.0.1");
  assert.match(out, /nc-exit=[1-9]/);

  // The control: without the guard's table the same probe does reach the host, so it was the guard that stopped it.
  t.after(() => installLoopbackGuard());
  execFileSync("nft", ["delete", "table", "inet", GUARD_TABLE]);
  assert.match(await probe(), /host-loopback-reached/, "without the guard the probe reaches the host's loopback (finding 10)");
  await installLoopbackGuard();
  assert.doesNotMatch(await probe(), /host-loopback-reached/, "with the guard back the guest is cut off again");
});
