/**
 * The pure parts of NAT (nat.ts): uplink names, link-net allocation, both rulesets — and that nft accepts the
 * rulesets (`nft -c` inside a `vt-` netns of the test's own, deleted afterwards; nothing is loaded anywhere).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { DhcpServers } from "./dhcp.ts";
import { parseCidr } from "./ipam.ts";
import { allocateLinkNet, natRuleset, uplinkNames, uplinkRuleset } from "./nat.ts";
import { hostNetns } from "./netns.ts";

test("uplink names: vu-<8 hex> and vigil-up-<6 hex>, fit IFNAMSIZ, stable per netns, distinct between netns", () => {
  const a = uplinkNames("vigil-3fa2c1d0");
  assert.match(a.vigil, /^vu-[0-9a-f]{8}$/);
  assert.match(a.host, /^vigil-up-[0-9a-f]{6}$/);
  assert.ok(a.host.length <= 15 && a.vigil.length <= 15);
  assert.deepEqual(uplinkNames("vigil-3fa2c1d0"), a);
  const b = uplinkNames("vigil-00000000");
  assert.notEqual(a.vigil, b.vigil);
  assert.notEqual(a.host, b.host);
});

test("link net: a /30 of 169.254.0.0/16 outside the reserved /24s and the metadata address, skipping used ones", () => {
  const seen = new Set<string>();
  for (let i = 0; i < 500; i++) {
    const l = allocateLinkNet(`vigil-${i}`, []);
    const m = /^169\.254\.(\d+)\.(\d+)\/30$/.exec(l.cidr);
    assert.ok(m, l.cidr);
    const [third, fourth] = [Number(m[1]), Number(m[2])];
    assert.ok(third >= 1 && third <= 254, l.cidr);
    assert.equal(fourth % 4, 0);
    assert.notEqual(l.cidr, "169.254.169.252/30");
    assert.equal(l.hostAddr, `169.254.${third}.${fourth + 1}`);
    assert.equal(l.vigilAddr, `169.254.${third}.${fourth + 2}`);
    seen.add(l.cidr);
  }
  assert.ok(seen.size > 400, "spread by the seed");
  const first = allocateLinkNet("vigil-abc", []);
  assert.deepEqual(allocateLinkNet("vigil-abc", ["10.0.0.1", "169.254.200.9"]), first, "deterministic; unrelated addresses ignored");
  const moved = allocateLinkNet("vigil-abc", [first.vigilAddr]);
  assert.notEqual(moved.cidr, first.cidr, "a /30 holding a used address is skipped");
  const moved2 = allocateLinkNet("vigil-abc", [`${first.hostAddr}/16`, moved.hostAddr]);
  assert.notEqual(moved2.cidr, first.cidr);
  assert.notEqual(moved2.cidr, moved.cidr);
});

const nets = [
  { cidr: "10.91.0.0/24", bridge: "vb-out" },
  { cidr: "10.92.0.0/24", bridge: "vb-web" },
];

test("vigil_nat: masquerade of the NAT CIDRs out of the uplink; only NAT bridges and CIDRs reach it; nothing opens from it", () => {
  const text = natRuleset("vu-12345678", nets);
  assert.match(text, /^table ip vigil_nat\ndelete table ip vigil_nat\ntable ip vigil_nat \{/);
  assert.match(text, /oifname "vu-12345678" ip saddr \{ 10\.91\.0\.0\/24, 10\.92\.0\.0\/24 \} masquerade/);
  assert.match(text, /oifname "vu-12345678" iifname != \{ "vb-out", "vb-web" \} drop/);
  assert.match(text, /oifname "vu-12345678" ip saddr != \{ 10\.91\.0\.0\/24, 10\.92\.0\.0\/24 \} drop/);
  assert.match(text, /chain forward \{[^]*?iifname "vu-12345678" ct state != \{ established, related \} drop/);
  assert.match(text, /chain input \{\n[^\n]*\n\t\tiifname "vu-12345678" ct state != \{ established, related \} drop/);
  assert.doesNotMatch(text, /vb-lab/);
  assert.equal(natRuleset("vu-12345678", []), "table ip vigil_nat\ndelete table ip vigil_nat\n", "no NAT network: the table goes");
  assert.throws(() => natRuleset("vu-1\" accept", nets), /bad uplink device/);
  assert.throws(() => natRuleset("vu-1", [{ cidr: "10.0.0.0/24 } accept {", bridge: "vb-x" }]), /bad CIDR/);
});

test("vigil_uplink: masquerade of the link net toward anything but the uplink; no new connection from it to the host", () => {
  const text = uplinkRuleset("vigil-up-abcdef", "169.254.37.8/30");
  assert.match(text, /^table ip vigil_uplink\ndelete table ip vigil_uplink\n/);
  assert.match(text, /ip saddr 169\.254\.37\.8\/30 oifname != "vigil-up-abcdef" masquerade/);
  assert.match(text, /iifname "vigil-up-abcdef" ct state != \{ established, related \} drop/);
  assert.throws(() => uplinkRuleset("x y", "169.254.37.8/30"), /bad uplink device/);
});

test("nft accepts both rulesets (nft -c in a netns of the test's own)", (t) => {
  const ns = `vt-natc-${randomBytes(4).toString("hex")}`;
  execFileSync("ip", ["netns", "add", ns]);
  t.after(() => execFileSync("ip", ["netns", "del", ns]));
  for (const text of [natRuleset("vu-12345678", nets), uplinkRuleset("vigil-up-abcdef", "169.254.37.8/30")]) {
    execFileSync("ip", ["netns", "exec", ns, "nft", "-c", "-f", "-"], { input: text, stdio: ["pipe", "pipe", "pipe"] });
  }
  // A broken script is refused: the check can fail.
  assert.throws(() => execFileSync("ip", ["netns", "exec", ns, "nft", "-c", "-f", "-"], { input: natRuleset("vu-12345678", nets).replace("masquerade", "masq"), stdio: ["pipe", "pipe", "pipe"] }));
});

test("DHCP tells a NAT network's clients their gateway is the router; a network without NAT gets no router", () => {
  const dhcp = new DhcpServers(hostNetns("vt-none"), "/nonexistent");
  const cidr = parseCidr("10.91.0.0/24");
  assert.ok(dhcp.args({ name: "out", bridge: "vb-out", cidr, router: "10.91.0.1" }, []).includes("--dhcp-option=option:router,10.91.0.1"));
  const plain = dhcp.args({ name: "in", bridge: "vb-in", cidr }, []);
  assert.ok(plain.includes("--dhcp-option=option:router"));
  assert.ok(!plain.some((a) => a.startsWith("--dhcp-option=option:router,")));
});
