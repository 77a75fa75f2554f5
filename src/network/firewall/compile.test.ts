/**
 * The compiler's output is a golden file (spec in, nft text out, diffable), checked by the kernel with `nft -c` in
 * a test netns; the policy schema's errors name the field.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { randomBytes } from "node:crypto";
import { runCommand } from "../../util/run-command.ts";
import type { AttachedNic } from "../types.ts";
import { compileRuleset, type CompileInput } from "./compile.ts";
import { parsePeerText, parsePolicy, parseRule, MAX_RULES } from "./policy.ts";

const nic = (id: string, tap: string, ip: string, labels: Record<string, string> = {}): AttachedNic => ({
  vmId: id, vmName: id, nic: "net0", network: "lan", bridge: "vb-lan", tap, mac: `52:54:00:00:00:${tap.slice(-2)}`, ip, labels,
});

const input: CompileInput = {
  nics: [nic("db", "vt-00000000b2", "10.77.0.3", { role: "db" }), nic("web", "vt-00000000a1", "10.77.0.2"), nic("sick", "vt-00000000c3", "10.77.0.4")],
  networks: [
    { name: "lan", cidr: "10.77.0.0/24", gateway: "10.77.0.1", bridge: "vb-lan", dhcp: true, createdAt: "x" },
    { name: "dmz", cidr: "10.78.0.0/24", gateway: "10.78.0.1", bridge: "vb-dmz", dhcp: true, createdAt: "x" },
  ],
  policies: new Map([
    ["web", parsePolicy({ rules: [
      { direction: "in", action: "accept", proto: "tcp", ports: "80" },
      { direction: "in", action: "accept", proto: "tcp", ports: "8000-8080", peer: { cidr: "10.0.0.0/8" } },
      { direction: "out", action: "accept", proto: "tcp", ports: "5432", peer: { label: "role=db" } },
      { direction: "out", action: "drop", proto: "any", peer: { vm: "ghost" } },
      { direction: "in", action: "drop", proto: "icmp", comment: "no \"ping\"; } drop" },
    ], defaults: { in: "drop", out: "drop" } })],
  ]),
  quarantined: new Set(["sick"]),
  services: [{ name: "updates", ip: "10.77.0.1", proto: "tcp", port: 8443 }, { name: "dns", ip: "10.77.0.1", proto: "udp", port: 53 }],
};

const GOLDEN = join(import.meta.dirname, "testdata", "ruleset.nft");

test("the compiled ruleset matches the golden file (same input, same text)", () => {
  const { text, notes } = compileRuleset(input);
  if (process.env.VIGIL_UPDATE_GOLDEN === "1") writeFileSync(GOLDEN, text);
  assert.equal(text, readFileSync(GOLDEN, "utf8"));
  assert.equal(compileRuleset({ ...input, nics: [...input.nics].reverse() }).text, text, "order of NICs does not matter");
  assert.deepEqual(notes, [{ vmId: "web", rule: 4, note: 'matches nothing: no VM named "ghost" is attached on this host' }]);
  assert.ok(!text.includes("ping"), "user comments never reach nft");
});

test("the kernel accepts the compiled ruleset (nft -c in a test netns), and the empty one", async (t) => {
  const ns = `vt-fwc-${randomBytes(4).toString("hex")}`;
  await runCommand("ip", ["netns", "add", ns]);
  t.after(() => runCommand("ip", ["netns", "del", ns]));
  await runCommand("ip", ["netns", "exec", ns, "nft", "-c", "-f", "-"], { input: compileRuleset(input).text });
  const empty = compileRuleset({ ...input, nics: [] }).text;
  assert.equal(empty, "table bridge vigil_l2\ndelete table bridge vigil_l2\ntable inet vigil_fw\ndelete table inet vigil_fw\n");
  await runCommand("ip", ["netns", "exec", ns, "nft", "-c", "-f", "-"], { input: empty });
});

test("the compiler refuses a NIC whose fields could smuggle nft syntax", () => {
  const bad = { ...nic("x", "vt-00000000a1", "10.77.0.2"), mac: '52:54:00:00:00:01 accept; "' };
  assert.throws(() => compileRuleset({ ...input, nics: [bad] }), /Bug in vigil: .*MAC/);
  assert.throws(() => compileRuleset({ ...input, nics: [{ ...nic("x", "vt-0000; drop", "10.77.0.2") }] }), /tap name/);
  assert.throws(() => compileRuleset({ ...input, nics: [nic("x", "vt-00000000a1", "10.77.0.256")] }), /address/);
});

test("policy validation names the field and what is allowed", () => {
  const cases: [unknown, RegExp][] = [
    [{ direction: "up", action: "accept", proto: "tcp" }, /"direction"/],
    [{ direction: "in", action: "accept", proto: "icmp", ports: "22" }, /"ports" is allowed only with proto tcp or udp/],
    [{ direction: "in", action: "accept", proto: "tcp", ports: "90-80" }, /"ports" must be a port "N" or a range "N-M"/],
    [{ direction: "in", action: "accept", proto: "tcp", ports: "0" }, /"ports"/],
    [{ direction: "in", action: "accept", proto: "tcp", ports: "70000" }, /"ports"/],
    [{ direction: "in", action: "accept", proto: "tcp", peer: { cidr: "10.0.0.0/33" } }, /"peer/],
    [{ direction: "in", action: "accept", proto: "tcp", peer: { label: "no-equals" } }, /"peer/],
    [{ direction: "in", action: "accept", proto: "tcp", comment: "x".repeat(201) }, /"comment" must be at most 200/],
    [{ direction: "in", action: "accept", proto: "tcp", comment: "tab\there" }, /"comment" must be printable/],
    [{ direction: "in", action: "accept", proto: "tcp", extra: 1 }, /unknown field "extra"/],
  ];
  for (const [rule, re] of cases) assert.throws(() => parseRule(rule), re, JSON.stringify(rule));
  assert.deepEqual(parseRule({ direction: "out", action: "drop", proto: "udp", ports: "53", peer: { vm: "dns1" } }).peer, { vm: "dns1" });
  const many = Array.from({ length: MAX_RULES + 1 }, () => ({ direction: "in", action: "accept", proto: "any" }));
  assert.throws(() => parsePolicy({ rules: many, defaults: { in: "drop", out: "accept" } }), /"rules" must have at most 2000 rules/);
  assert.deepEqual(parsePeerText("vm:web"), { vm: "web" });
  assert.deepEqual(parsePeerText("label:role=db"), { label: "role=db" });
  assert.deepEqual(parsePeerText("10.0.0.0/8"), { cidr: "10.0.0.0/8" });
  assert.throws(() => parsePeerText("somewhere"), /Invalid peer "somewhere"/);
});

test("fw show keeps only the VM's own elements of a dispatch map", async () => {
  const { onlyElementsOf } = await import("./nft.ts");
  assert.equal(
    onlyElementsOf('iifname . ip saddr vmap { "vb-t" . 10.0.0.2 : jump out-vt-00000000a1, "vb-t" . 10.0.0.3 : jump out-vt-00000000b2 }', ["vt-00000000b2"]),
    'iifname . ip saddr vmap { "vb-t" . 10.0.0.3 : jump out-vt-00000000b2 }',
  );
  assert.equal(onlyElementsOf("ct state established,related accept", ["vt-00000000b2"]), "ct state established,related accept");
});

test("NAT (docs/network.md, ## NAT): a NAT network's NICs that their out policy allows may reach the uplink; others and the uplink may not", () => {
  const nat: CompileInput = {
    ...input,
    nics: [...input.nics, { ...nic("out1", "vt-00000000d4", "10.78.0.2"), network: "dmz", bridge: "vb-dmz" }],
    networks: input.networks.map((n) => (n.name === "dmz" ? { ...n, nat: true } : n)),
    uplink: "vu-0123abcd",
  };
  const text = compileRuleset(nat).text;
  assert.match(text, /iifname "vb-dmz" oifname != \{ "vb-dmz", "vu-0123abcd" \} drop comment "between networks"/);
  assert.match(text, /iifname "vb-lan" oifname != "vb-lan" drop comment "between networks"/, "a network without NAT still reaches nothing else");
  assert.match(text, /iifname "vu-0123abcd" drop comment "nothing opens a connection from the NAT uplink"/);
  // After both vmaps: the source's out chain has returned (allowed) by then.
  assert.match(text, /oifname \. ip daddr vmap \{[^\n]*\}\n\t\toifname "vu-0123abcd" iifname \. ip saddr \{ "vb-dmz" \. 10\.78\.0\.2 \} accept/);
  assert.doesNotMatch(text, /"vb-lan" \. 10\.77\.0\.\d+ \} accept/);
  assert.equal(compileRuleset({ ...input, uplink: undefined }).text, compileRuleset(input).text, "without NAT: the golden ruleset, unchanged");
  assert.doesNotMatch(compileRuleset({ ...nat, uplink: undefined }).text, /vu-/, "no uplink: no NAT rule at all");
  assert.throws(() => compileRuleset({ ...nat, uplink: "vu-x\" accept" }), /uplink device/);
});

test("a network spanning hosts: its VXLAN port is let in minus DHCP and gateway ARP; a local NIC's allowed out traffic may reach the rest of the range; the kernel accepts it", async (t) => {
  const span = { vni: 42, peers: ["10.251.0.2"], pool: { first: "10.77.0.2", last: "10.77.0.127" }, device: "vx-lan" };
  const spanned: CompileInput = { ...input, networks: input.networks.map((n) => (n.name === "lan" ? { ...n, span } : n)) };
  const text = compileRuleset(spanned).text;
  assert.match(text, /iifname vmap \{ [^\n]*"vx-lan" : jump from-vx-lan \}/);
  assert.match(text, /chain from-vx-lan \{\n\t\tether type arp arp saddr ip 10\.77\.0\.1 drop[^\n]*\n\t\tether type arp arp daddr ip 10\.77\.0\.1 drop[^\n]*\n\t\tether type ip udp dport \{ 67, 68 \} drop[^\n]*\n\t\tether type ip ip daddr 10\.77\.0\.1 drop[^\n]*\n\t\tether type ip ip saddr 10\.77\.0\.1 drop[^\n]*\n\t\taccept/);
  // After both vmaps (the source's out chain returned); the quarantined NIC (10.77.0.4) is not a source.
  assert.match(text, /oifname \. ip daddr vmap \{[^\n]*\}\n\t\tiifname "vb-lan" oifname "vb-lan" ip saddr \{ 10\.77\.0\.2, 10\.77\.0\.3 \} ip daddr 10\.77\.0\.0\/24 ip daddr != 10\.77\.0\.1 accept/, "never to another host's gateway");
  assert.equal(compileRuleset(input).text, readFileSync(GOLDEN, "utf8"), "without span: the golden ruleset, unchanged");
  assert.doesNotMatch(compileRuleset(input).text, /vx-/);
  assert.throws(() => compileRuleset({ ...spanned, networks: spanned.networks.map((n) => (n.span ? { ...n, span: { ...span, device: 'vx-a" accept' } } : n)) }), /VXLAN device/);
  const ns = `vt-fws-${randomBytes(4).toString("hex")}`;
  await runCommand("ip", ["netns", "add", ns]);
  t.after(() => runCommand("ip", ["netns", "del", ns]));
  await runCommand("ip", ["netns", "exec", ns, "nft", "-c", "-f", "-"], { input: text });
});
