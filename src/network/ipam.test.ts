/**
 * IPAM properties (fast-check) and the switch's names: parsing accepts exactly canonical /16../29 networks, the
 * allocator hands out the lowest free host address and never the network, gateway or broadcast address, and
 * overlap is symmetric and agrees with a brute-force check.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { mkdtempSync, rmSync, symlinkSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { VigilError } from "../errors.ts";
import { allocate, assignable, broadcast, checkPool, contains, formatIpv4, gateway, netmask, overlaps, parseCidr, parseIpv4, splitPool } from "./ipam.ts";
import { bridgeName, checkNetworkName, tapName } from "./bridge.ts";
import { netnsName } from "./netns.ts";

const u32 = fc.integer({ min: 0, max: 0xffffffff });
const prefix = fc.integer({ min: 16, max: 29 });
const cidrOf = (ip: number, p: number) => `${formatIpv4((ip & ((0xffffffff << (32 - p)) >>> 0)) >>> 0)}/${p}`;

test("IPv4 text round-trips; leading zeros and out-of-range octets are refused", () => {
  fc.assert(fc.property(u32, (n) => parseIpv4(formatIpv4(n)) === n));
  for (const bad of ["010.0.0.1", "256.0.0.1", "1.2.3", "1.2.3.4.5", "a.b.c.d", " 1.2.3.4", ""]) assert.equal(parseIpv4(bad), undefined, bad);
  assert.equal(netmask(24), "255.255.255.0");
  assert.equal(netmask(29), "255.255.255.248");
});

test("parseCidr accepts exactly networks /16../29 with host bits clear, and names the field otherwise", () => {
  fc.assert(
    fc.property(u32, prefix, (ip, p) => {
      const text = cidrOf(ip, p);
      const c = parseCidr(text);
      return c.text === text && c.prefix === p && gateway(c) === c.network + 1 && broadcast(c) - c.network === 2 ** (32 - p) - 1;
    }),
  );
  fc.assert(
    fc.property(u32, fc.integer({ min: 0, max: 32 }), (ip, p) => {
      const text = `${formatIpv4(ip)}/${p}`;
      const ok = p >= 16 && p <= 29 && cidrOf(ip, p) === text;
      try {
        parseCidr(text, "cidr");
        return ok;
      } catch (e) {
        return !ok && e instanceof VigilError && e.field === "cidr";
      }
    }),
  );
  assert.throws(() => parseCidr("10.0.0.0/30"), /\/16 to \/29.*too small/);
  assert.throws(() => parseCidr("10.0.0.0/8"), /too large/);
  assert.throws(() => parseCidr("10.0.0.5/24"), /host bits are set \(the network is 10\.0\.0\.0\/24\)/);
  assert.throws(() => parseCidr("10.0.0.0"), /ADDRESS\/PREFIX/);
});

test("allocate returns the lowest free host address, never network, gateway, broadcast or a used one", () => {
  fc.assert(
    fc.property(u32, fc.integer({ min: 24, max: 29 }), fc.array(fc.nat(255), { maxLength: 300 }), (ip, p, offsets) => {
      const c = parseCidr(cidrOf(ip, p));
      const used = [...new Set(offsets.map((o) => formatIpv4(c.network + (o % 2 ** (32 - p)))))];
      const free: number[] = [];
      for (let a = c.network + 2; a < broadcast(c); a++) if (!used.includes(formatIpv4(a))) free.push(a);
      try {
        const got = parseIpv4(allocate(c, used))!;
        return free.length > 0 && got === free[0] && contains(c, got) && got !== c.network && got !== gateway(c) && got !== broadcast(c);
      } catch (e) {
        return free.length === 0 && e instanceof VigilError && e.code === "VIGIL_CONFLICT";
      }
    }),
  );
  const c = parseCidr("10.9.0.0/29");
  assert.equal(assignable(c), 5);
  assert.equal(allocate(c, ["10.9.0.2", "10.9.0.4", "192.168.0.3"]), "10.9.0.3", "addresses of other ranges are ignored");
  assert.throws(() => allocate(c, ["10.9.0.2", "10.9.0.3", "10.9.0.4", "10.9.0.5", "10.9.0.6"], "lab"), /network "lab": all 5 addresses of 10\.9\.0\.0\/29 are in use/);
});

test("overlap is symmetric and agrees with a brute-force membership check", () => {
  fc.assert(
    fc.property(u32, prefix, u32, prefix, (ipA, pA, ipB, pB) => {
      const a = parseCidr(cidrOf(ipA, pA));
      const b = parseCidr(cidrOf(ipB, pB));
      const brute = contains(a, b.network) || contains(a, broadcast(b)) || contains(b, a.network);
      return overlaps(a, b) === overlaps(b, a) && overlaps(a, b) === brute;
    }),
  );
  fc.assert(fc.property(u32, prefix, (ip, p) => overlaps(parseCidr(cidrOf(ip, p)), parseCidr(cidrOf(ip, p)))));
});

test("names: network names fit the bridge name in IFNAMSIZ, taps are stable per (VM, NIC), netns per home", () => {
  checkNetworkName("a");
  checkNetworkName("lab-1234567a");
  for (const bad of ["", "1lab", "Lab", "lab_1", "abcdefghijklm", "lab.x"]) assert.throws(() => checkNetworkName(bad), (e: VigilError) => e.field === "name", bad);
  assert.equal(bridgeName("lab-1234567a").length, 15);
  fc.assert(fc.property(fc.uuid(), fc.string({ minLength: 1, maxLength: 15 }), (id, nic) => /^vt-[0-9a-f]{10}$/.test(tapName(id, nic)) && tapName(id, nic) === tapName(id, nic)));
  assert.notEqual(tapName("a", "net0"), tapName("a", "net1"));
  assert.match(netnsName("/nonexistent/home-a", {}), /^vigil-[0-9a-f]{8}$/);
  assert.notEqual(netnsName("/nonexistent/home-a", {}), netnsName("/nonexistent/home-b", {}));
  const real = mkdtempSync(join(tmpdir(), "vigil-netns-"));
  const link = `${real}-link`;
  symlinkSync(real, link);
  try {
    assert.equal(netnsName(link, {}), netnsName(real, {}), "the real path of VIGIL_HOME decides");
  } finally {
    rmSync(link);
    rmSync(real, { recursive: true });
  }
  assert.equal(netnsName("/x", { VIGIL_NETNS: "vt-mine" }), "vt-mine");
  assert.throws(() => netnsName("/x", { VIGIL_NETNS: "../etc" }), (e: VigilError) => e.field === "VIGIL_NETNS");
});

test("a spanned network's pools: splitPool gives disjoint slices covering every assignable address; allocate stays in its pool", () => {
  fc.assert(
    fc.property(u32, prefix, fc.integer({ min: 1, max: 5 }), (ip, p, n) => {
      const c = parseCidr(cidrOf(ip, p));
      const pools = splitPool(c, n);
      assert.equal(pools.length, n);
      let next = gateway(c) + 1;
      for (const pool of pools) {
        checkPool(c, pool);
        assert.equal(parseIpv4(pool.first), next, "contiguous, no gap, no overlap");
        next = parseIpv4(pool.last)! + 1;
      }
      assert.equal(next, broadcast(c), "the last slice ends before the broadcast address");
      const last = pools[n - 1]!;
      const got = allocate(c, [], c.text, last);
      assert.equal(got, last.first, "the lowest free address of this host's pool, not of the range");
    }),
  );
  const c = parseCidr("10.77.0.0/29");
  assert.throws(() => allocate(c, ["10.77.0.4", "10.77.0.5"], "lab", { first: "10.77.0.4", last: "10.77.0.5" }), (e: unknown) => e instanceof VigilError && /pool 10\.77\.0\.4-10\.77\.0\.5 is full/.test(e.message));
  assert.equal(allocate(c, ["10.77.0.4"], "lab", { first: "10.77.0.4", last: "10.77.0.5" }), "10.77.0.5");
  for (const bad of [{ first: "10.77.0.1", last: "10.77.0.3" }, { first: "10.77.0.5", last: "10.77.0.3" }, { first: "10.77.0.2", last: "10.77.0.7" }, { first: "10.78.0.2", last: "10.77.0.3" }]) {
    assert.throws(() => checkPool(c, bad), (e: unknown) => e instanceof VigilError && e.field === "span.pool", JSON.stringify(bad));
  }
  assert.throws(() => splitPool(c, 6), (e: unknown) => e instanceof VigilError && e.field === "cidr");
});
