/**
 * The network-access gate against real nftables and veths in namespaces the test creates (the firewall's Lab): a VM
 * that is not `current` under a gate policy wakes in quarantine and reaches only the quarantine services; a scan
 * that makes it current releases it; one an admin quarantined stays. Every decision audited.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { labDaemon } from "../network/firewall/testing/lab-daemon.ts";
import type { ScanRecord } from "./posture-repository.ts";

/** A scan taken against the advisory data and rules the daemon holds now (else it would be stale at once). */
let current: { advisoriesSha256?: string; rulesSha256?: string } = {};
const scan = (o: Partial<ScanRecord> = {}): ScanRecord => ({
  scannedAt: new Date().toISOString(),
  how: "in-band", // the lab VMs are running: scanned through their agent
  advisoriesSha256: current.advisoriesSha256 ?? "a".repeat(64),
  rulesSha256: current.rulesSha256 ?? "r".repeat(64),
  complete: true,
  packages: [{ name: "bash", version: "5.2.15-2+b2", arch: "amd64" }],
  pending: [],
  findings: [],
  notes: [],
  elapsedMs: 5,
  ...o,
});

test("gate: a never-scanned VM wakes in quarantine, reaches only the update service, and a clean scan releases it", async (t) => {
  const { lab, web, client, d, vigil } = await labDaemon(t);
  current = await d.deps.scans.current();
  await lab.serve(web, 8443);
  assert.equal((await vigil("fw", "default", "web", "--in", "accept")).status, 0);
  assert.equal((await vigil("net", "service", "add", "updates", "--addr", web.nic.ip, "--port", "8443")).status, 0);
  const record = () => d.repo.getByName("client");

  // Gate off (the built-in default): the start is allowed and not even a decision is recorded.
  await d.deps.posture.gate(await record(), "start");
  assert.equal(await lab.reach(client, web.nic.ip, 80), true);
  assert.equal((await d.deps.audit.list({})).filter((e) => e.action === "posture.gate").length, 0);

  let r = await vigil("posture", "policy", "set", "default", "--gate", "on", "--max-age-days", "3", "--vulnerable-at", "medium");
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /gate policy default: gate on, stale after 3 days, vulnerable at medium/);
  await d.deps.posture.gate(await record(), "start");
  assert.equal(await lab.reach(client, web.nic.ip, 80), false, "gated: no other destination");
  assert.equal(await lab.reach(client, web.nic.ip, 8443), true, "gated: the update service");
  r = await vigil("posture", "client");
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /^state +unknown$/m);
  assert.match(r.stdout, /^quarantine +since .* by system: posture gate: unknown: never scanned$/m);
  assert.match(r.stdout, /^reason +never scanned$/m);
  const list = JSON.parse((await vigil("vm", "list", "--json")).stdout) as { name: string; posture: string }[];
  assert.equal(list.find((v) => v.name === "client")?.posture, "unknown");

  // A scan with a pending medium update: vulnerable under this policy; it stays in.
  let out = await d.deps.posture.recordScan(await record(), scan({ pending: [{ package: "openssl", installed: "3.0.11-1~deb12u2", candidate: "3.0.15-1~deb12u1", severity: "medium", cves: ["CVE-2024-0001"] }] }));
  assert.deepEqual([out.posture.state, out.released], ["vulnerable", false]);
  assert.equal(await lab.reach(client, web.nic.ip, 80), false);
  // A clean scan after it: current, released by the system, audited.
  out = await d.deps.posture.recordScan(await record(), scan());
  assert.deepEqual([out.posture.state, out.released], ["current", true]);
  assert.equal(await lab.reach(client, web.nic.ip, 80), true, "released");
  const audit = await d.deps.audit.list({});
  const gate = audit.find((e) => e.action === "posture.gate");
  assert.equal(gate?.actor, "system");
  assert.equal(gate?.details?.decision, "quarantine");
  assert.equal(gate?.details?.state, "unknown");
  assert.ok(audit.some((e) => e.action === "posture.release" && e.target?.name === "client"));
  assert.ok(audit.some((e) => e.action === "posture.policy.set" && e.result === "ok"));

  // The next start is decided on that scan (newer than the last run): allowed. The resume after it is not: the VM
  // has run since the scan.
  await d.deps.posture.gate(await record(), "start");
  assert.equal(await lab.reach(client, web.nic.ip, 80), true, "the scan was current when this start was decided");
  await d.deps.posture.gate(await record(), "resume");
  assert.equal(await lab.reach(client, web.nic.ip, 80), false, "it ran since the scan: the resume is gated");
  assert.match((await vigil("posture", "client")).stdout, /^state +stale$/m);
});

test("gate: a VM an admin quarantined stays in after a clean scan; an infected one stays in whatever else holds", async (t) => {
  const { web, d, vigil } = await labDaemon(t);
  current = await d.deps.scans.current();
  assert.equal((await vigil("posture", "policy", "set", "vm:client", "--gate", "on")).status, 0);
  assert.equal((await vigil("vm", "quarantine", "client", "--reason", "incident 42")).status, 0);
  const out = await d.deps.posture.recordScan(await d.repo.getByName("client"), scan());
  assert.deepEqual([out.posture.state, out.released], ["current", false]);
  assert.match((await vigil("posture", "client")).stdout, /quarantine +since .* by root: incident 42/);
  await d.deps.posture.gate(await d.repo.getByName("client"), "start");
  assert.equal((await d.deps.audit.list({})).find((e) => e.action === "posture.gate")?.details?.decision, "stays in quarantine (put there by an admin)");

  const infected = await d.deps.posture.recordScan(await d.repo.getByName("web"), scan({ findings: [{ path: "/opt/x", rule: "planted", pattern: "$m", offset: 0, excerptHex: "00" }] }));
  assert.equal(infected.posture.state, "infected");
  assert.equal(await d.deps.firewall.quarantineOf(web.nic.vmId), undefined, "web has no gate: a finding is shown, nothing is enforced");
});

test("gate policies: scope and field errors name what is allowed; a VM's own policy wins; labels combine strictly", async (t) => {
  const { d, vigil } = await labDaemon(t, { client: { tier: "web", zone: "dmz" } });
  let r = await vigil("posture", "policy", "set", "group:x", "--gate", "on");
  assert.equal(r.status, 2);
  assert.match(r.stderr, /Invalid policy scope "group:x": use "default", "vm:NAME" or "label:KEY=VALUE"/);
  r = await vigil("posture", "policy", "set", "default", "--gate", "on", "--vulnerable-at", "severe");
  assert.equal(r.status, 2);
  assert.match(r.stderr, /Invalid gate policy: vulnerableAt/);
  r = await vigil("posture", "policy", "set", "default", "--gate", "on", "--max-age-days", "-1");
  assert.match(r.stderr, /Invalid gate policy: maxScanAgeDays/);
  assert.equal((await vigil("posture", "policy", "set", "label:tier=web", "--gate", "off", "--max-age-days", "30", "--vulnerable-at", "high")).status, 0);
  assert.equal((await vigil("posture", "policy", "set", "label:zone=dmz", "--gate", "on", "--max-age-days", "2", "--vulnerable-at", "critical")).status, 0);
  const client = await d.repo.getByName("client");
  assert.deepEqual(await d.deps.posture.effectivePolicy(client), { gate: true, maxScanAgeDays: 2, vulnerableAt: "high", scope: "label:tier=web,label:zone=dmz" });
  assert.equal((await vigil("posture", "policy", "set", "vm:client", "--gate", "off")).status, 0);
  assert.equal((await d.deps.posture.effectivePolicy(client)).scope, "vm:client");
  const listed = JSON.parse((await vigil("posture", "policy", "list", "--json")).stdout) as { scope: string }[];
  assert.deepEqual(listed.map((p) => p.scope), ["label:tier=web", "label:zone=dmz", "vm:client"]);
});
