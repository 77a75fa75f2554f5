/**
 * The firewall through the `vigil` command and the daemon, against real nftables in a test netns (testing/lab.ts):
 * versions, audit records, field errors, quarantine and its services — and the engine's refusal of a ruleset the
 * kernel rejects, which leaves the installed one in place.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { silentLogger } from "../../log.ts";
// First: the CLI/daemon chain extends zod with .openapi before any schema module loads.
import { labDaemon as setup } from "./testing/lab-daemon.ts";
import { FirewallEngine } from "./firewall-engine.ts";
import { installedFor } from "./nft.ts";
import { Lab } from "./testing/lab.ts";
import type { Policy } from "./policy.ts";

test("fw add/remove/default/show/history: versions, audit, installed rules, field errors", async (t) => {
  const { lab, web, client, d, vigil } = await setup(t);
  assert.equal(await lab.reach(client, web.nic.ip, 80), false, "default deny inbound");
  let r = await vigil("fw", "add", "web", "--dir", "in", "--proto", "tcp", "--port", "80", "--peer", "vm:client", "--comment", "from the client");
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /policy version 1 \(add rule 1: in accept tcp port 80 from vm:client # from the client\), installed/);
  assert.equal(await lab.reach(client, web.nic.ip, 80), true, "the new rule is installed");
  r = await vigil("fw", "show", "web", "--json");
  const shown = JSON.parse(r.stdout) as { version: number; installed: { chain: string; rules: string[] }[]; nics: { tap: string }[] };
  assert.equal(shown.version, 1);
  assert.equal(shown.nics[0]?.tap, web.nic.tap);
  const inChain = shown.installed.find((c) => c.chain === `in-${web.nic.tap}`);
  assert.deepEqual(inChain?.rules, [`ip saddr ${client.nic.ip} tcp dport 80 accept comment "rule 1"`, 'drop comment "default in"'], "read back from the kernel");
  r = await vigil("fw", "show", "web");
  assert.match(r.stdout, /^ {3}1 {2}in accept tcp port 80 from vm:client/m);

  r = await vigil("fw", "add", "web", "--dir", "up", "--proto", "tcp");
  assert.equal(r.status, 2);
  assert.match(r.stderr, /Invalid firewall rule: "direction"/);
  r = await vigil("fw", "add", "web", "--dir", "in", "--proto", "icmp", "--port", "22");
  assert.match(r.stderr, /"ports" is allowed only with proto tcp or udp/);
  r = await vigil("fw", "remove", "web", "5");
  assert.equal(r.status, 2);
  assert.match(r.stderr, /Invalid rule index 5: VM "web" has 1 rule \(use 1-1\)/);
  r = await vigil("fw", "add", "web", "--dir", "in", "--proto", "tcp", "--port", "81", "--peer", "vm:nobody", "--at", "1");
  assert.match(r.stdout, /version 2 .*installed\nnote: rule 1: matches nothing: no VM named "nobody"/);
  r = await vigil("fw", "remove", "web", "2");
  assert.equal(r.status, 0, r.stderr);
  assert.equal(await lab.reach(client, web.nic.ip, 80), false, "rule removed");
  r = await vigil("fw", "default", "web", "--in", "accept");
  assert.match(r.stdout, /version 4 \(defaults in accept, out accept\)/);
  assert.equal(await lab.reach(client, web.nic.ip, 80), true, "default in accept");
  r = await vigil("fw", "history", "web", "--json");
  assert.deepEqual((JSON.parse(r.stdout) as { versions: { version: number }[] }).versions.map((v) => v.version), [1, 2, 3, 4]);
  const changes = (await d.deps.audit.list({})).filter((e) => e.action === "fw.change" && e.result === "ok");
  assert.deepEqual(changes.map((e) => e.details?.version), [1, 2, 3, 4]);
  assert.match(String(changes[0]?.details?.summary), /add rule 1: in accept tcp port 80 from vm:client/);
  // Refusals are recorded too (error), with nothing stored.
  assert.ok((await d.deps.audit.list({})).some((e) => e.action === "fw.change" && e.result === "error"));
});

test("vm quarantine / release and net service: only the service is reachable, release restores; all audited", async (t) => {
  const { lab, web, client, d, vigil } = await setup(t);
  await lab.serve(web, 8443);
  assert.equal((await vigil("fw", "default", "web", "--in", "accept")).status, 0);
  assert.equal(await lab.reach(client, web.nic.ip, 80), true);
  let r = await vigil("net", "service", "add", "updates", "--addr", web.nic.ip, "--port", "8443");
  assert.equal(r.status, 0, r.stderr);
  r = await vigil("net", "service", "list", "--json");
  assert.deepEqual(JSON.parse(r.stdout), [{ name: "updates", ip: web.nic.ip, proto: "tcp", port: 8443 }]);
  r = await vigil("net", "service", "add", "bad", "--addr", "10.0.0.0/8", "--port", "1");
  assert.match(r.stderr, /Invalid request: "ip" must be an IPv4 address/);
  r = await vigil("vm", "quarantine", "client", "--reason", "stale patches");
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /VM client is now in quarantine/);
  assert.equal(await lab.reach(client, web.nic.ip, 80), false, "quarantined: no other port");
  assert.equal(await lab.reach(client, web.nic.ip, 8443), true, "the named service");
  r = await vigil("fw", "show", "client");
  assert.match(r.stdout, /QUARANTINED since .* stale patches/);
  assert.match(r.stdout, new RegExp(`q-${client.nic.tap}`));
  r = await vigil("vm", "quarantine", "client", "--reason", "again");
  assert.match(r.stdout, /was already in quarantine/);
  r = await vigil("vm", "release", "client");
  assert.match(r.stdout, /VM client is released from quarantine/);
  assert.equal(await lab.reach(client, web.nic.ip, 80), true, "released");
  r = await vigil("net", "service", "remove", "updates");
  assert.equal(r.status, 0, r.stderr);
  r = await vigil("net", "service", "remove", "updates");
  assert.equal(r.status, 3);
  const actions = (await d.deps.audit.list({})).filter((e) => e.result === "ok").map((e) => e.action);
  for (const a of ["net.service.add", "vm.quarantine", "vm.release", "net.service.remove"]) assert.ok(actions.includes(a), a);
  const q = (await d.deps.audit.list({})).find((e) => e.action === "vm.quarantine");
  assert.equal(q?.details?.reason, "stale patches");
});

test("a ruleset the kernel rejects is refused at the check and the installed one stays in place", async (t) => {
  const lab = new Lab();
  t.after(() => lab.close());
  await lab.start();
  const web = await lab.addVm("web");
  const client = await lab.addVm("client");
  await lab.serve(web, 80);
  const ok: Policy = { rules: [{ direction: "in", action: "accept", proto: "tcp", ports: "80" }], defaults: { in: "drop", out: "accept" } };
  const engine = new FirewallEngine({ policies: async () => new Map([[web.nic.vmId, ok]]), quarantined: async () => new Set(), services: async () => [] }, silentLogger());
  engine.connect(lab);
  assert.equal((await engine.apply()).installed, true);
  const before = await installedFor(lab.sw, [web.nic.tap]);
  // Past the schema (which would refuse it), so only the kernel can: port 99999.
  const bogus = { rules: [{ direction: "in", action: "accept", proto: "tcp", ports: "99999" }], defaults: { in: "drop", out: "accept" } } as Policy;
  await assert.rejects(engine.exclusive(({ check }) => check({ policy: { vmId: web.nic.vmId, policy: bogus } })), /Cannot change the firewall: nft rejects the resulting ruleset/);
  assert.deepEqual(await installedFor(lab.sw, [web.nic.tap]), before);
  assert.equal(await lab.reach(client, web.nic.ip, 80), true);
});

test("a change whose install fails keeps its version and says it is not installed", async (t) => {
  const { d, web, lab, vigil } = await setup(t);
  d.deps.firewall.connect({ netns: () => ({ name: "vt-fw-gone", path: "/run/netns/vt-fw-gone-nonexistent" }), networks: () => lab.networks(), attached: () => lab.attached() });
  const r = await vigil("fw", "add", "web", "--dir", "in", "--proto", "tcp", "--port", "80");
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /policy version 1 .*, NOT installed: network namespace vt-fw-gone does not exist/);
  const h = JSON.parse((await vigil("fw", "history", "web", "--json")).stdout) as { versions: unknown[] };
  assert.equal(h.versions.length, 1);
  const rec = (await d.deps.audit.list({})).find((e) => e.action === "fw.change" && e.target.id === web.nic.vmId);
  assert.equal(rec?.details?.installed, false);
  assert.match((await vigil("fw", "show", "web")).stdout, /last install FAILED .*vt-fw-gone does not exist/);
});
