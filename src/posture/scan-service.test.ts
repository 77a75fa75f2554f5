/**
 * `vigil scan`, `vigil advisories update` and `vigil posture rules` through the CLI and a real daemon, on the dormant
 * Debian disk set-up builds, imported as an image: the VM's disk is vigil's own overlay over it, so the scan reads a
 * two-layer chain. No guest is booted: the VM is dormant.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { cli, daemon } from "../cli/testing/cli-run.ts";
import { dormantFixture } from "../storage/testing/debian-dormant.ts";

test("vigil scan: a dormant Debian VM's packages, pending updates and a signature finding become its posture; audited; a running VM is refused", { timeout: 300_000 }, async (t) => {
  const f = dormantFixture();
  const { d, env } = await daemon(t);
  const vigil = (...args: string[]) => cli(env, args);
  let r = await vigil("image", "import", f.base, "--name", "bookworm-dormant");
  assert.equal(r.status, 0, r.stderr);
  r = await vigil("vm", "create", "old", "--image", "bookworm-dormant", "--memory", "128");
  assert.equal(r.status, 0, r.stderr);

  // Rules: refused when they do not compile; then a rule for a file every Debian has.
  const dir = mkdtempSync(join(tmpdir(), "vigil-rules-"));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  writeFileSync(join(dir, "bad.yar"), "rule x { condition: $nope }");
  r = await vigil("posture", "rules", join(dir, "bad.yar"));
  assert.equal(r.status, 2);
  assert.match(r.stderr, /The YARA rules do not compile/);
  writeFileSync(join(dir, "motd.yar"), 'rule debian_motd { strings: $m = "Debian GNU/Linux comes with ABSOLUTELY NO WARRANTY" condition: $m }');
  r = await vigil("posture", "rules", join(dir, "motd.yar"));
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /signature rules set: \d+ bytes, sha256 [0-9a-f]{64}/);

  r = await vigil("advisories", "update", "--from", "/var/lib/apt/lists", "--json");
  assert.equal(r.status, 0, r.stderr);
  const adv = JSON.parse(r.stdout) as { sha256: string; indexes: { signature: string }[] };
  assert.match(adv.sha256, /^[0-9a-f]{64}$/);
  assert.ok(adv.indexes.length > 0);
  r = await vigil("advisories", "update", "--from", "/nonexistent");
  assert.notEqual(r.status, 0);
  assert.match(r.stderr, /Cannot read advisories from "\/nonexistent"/);

  r = await vigil("scan", "old", "--json");
  assert.equal(r.status, 0, r.stderr);
  const scan = JSON.parse(r.stdout) as { posture: { state: string; reasons: string[] }; scan: { os: { id: string }; packages: unknown[]; pending: unknown[]; findings: { path: string; rule: string }[]; advisoriesSha256: string; how: string } };
  assert.equal(scan.scan.how, "offline");
  assert.equal(scan.scan.os.id, "debian");
  assert.equal(scan.scan.packages.length, f.manifest.packages);
  assert.ok(scan.scan.pending.length > 0);
  assert.equal(scan.scan.advisoriesSha256, adv.sha256);
  // Debian ships the text twice: /etc/motd and the copy base-files keeps.
  assert.deepEqual(scan.scan.findings.map((x) => [x.path, x.rule]).sort(), [["/etc/motd", "debian_motd"], ["/usr/share/base-files/motd", "debian_motd"]]);
  assert.equal(scan.posture.state, "infected");
  r = await vigil("posture", "old");
  assert.match(r.stdout, /^state +infected$/m);
  assert.match(r.stdout, /^packages +\d+$/m);
  assert.match(r.stdout, /^reason +signature debian_motd in \/etc\/motd$/m);
  const list = JSON.parse((await vigil("vm", "list", "--json")).stdout) as { name: string; posture: string }[];
  assert.equal(list.find((v) => v.name === "old")?.posture, "infected");
  const audit = await d.deps.audit.list({});
  const rec = audit.find((e) => e.action === "posture.scan" && e.result === "ok");
  assert.equal(rec?.details?.state, "infected");
  assert.ok(audit.some((e) => e.action === "posture.rules.set" && e.result === "ok"));
  assert.ok(audit.some((e) => e.action === "posture.advisories.update" && e.result === "ok"));

  // Changing the rules makes the recorded scan stale; only an offline VM is scanned.
  writeFileSync(join(dir, "none.yar"), 'rule nothing { strings: $m = "no such text anywhere 7c1e" condition: $m }');
  assert.equal((await vigil("posture", "rules", join(dir, "none.yar"))).status, 0);
  assert.match((await vigil("posture", "old")).stdout, /reason +the signature rules changed since the scan/);
  // The gate on a start that would be held: it scans first, and the fresh scan (no finding under the new rules)
  // lets the VM start normally; the decision records the pre-boot scan.
  // (Its pending updates are of unknown urgency without tracker data: this VM's policy counts only high ones.)
  assert.equal((await vigil("posture", "policy", "set", "vm:old", "--gate", "on", "--vulnerable-at", "high")).status, 0);
  await d.deps.posture.gate(await d.repo.getByName("old"), "start");
  const gate = (await d.deps.audit.list({})).filter((e) => e.action === "posture.gate").pop();
  assert.equal(gate?.details?.scannedBeforeBoot, true);
  assert.equal(gate?.details?.decision, "allow");
  assert.equal(gate?.details?.state, "current");
  assert.equal(await d.deps.firewall.quarantineOf((await d.repo.getByName("old")).id), undefined);

  // The stale-fleet report and the rescans (rescan.ts): new rules put the dormant, scanned VM behind; a VM never
  // scanned is listed as unknown and left alone; `posture rescan` catches up exactly the one behind.
  assert.equal((await vigil("vm", "create", "fresh", "--image", "bookworm-dormant", "--memory", "128")).status, 0);
  writeFileSync(join(dir, "other.yar"), 'rule other { strings: $m = "another absent text 51d0" condition: $m }');
  assert.equal((await vigil("posture", "rules", join(dir, "other.yar"))).status, 0);
  type Row = { vm: string; state: string; behind: boolean; rulesChanged: boolean | null; advisoriesChanged: boolean | null; ageDays: number | null; pending: number };
  const report = async () => {
    const out = await vigil("posture", "stale", "--json");
    assert.equal(out.status, 0, out.stderr);
    return JSON.parse(out.stdout) as Row[];
  };
  let rows = await report();
  const oldRow = rows.find((x) => x.vm === "old")!;
  assert.deepEqual([oldRow.behind, oldRow.rulesChanged, oldRow.advisoriesChanged, oldRow.ageDays], [true, true, false, 0]);
  assert.ok(oldRow.pending > 0);
  assert.deepEqual(rows.find((x) => x.vm === "fresh"), { ...rows.find((x) => x.vm === "fresh")!, state: "unknown", behind: false, ageDays: null });
  // (It ran since: the gate above let it start after its pre-boot scan.)
  assert.match((await vigil("posture", "stale")).stdout, /^old +stale +0 d +no +yes +yes +\d+ \(unknown\) +0 +rescan$/m);
  assert.match((await vigil("posture", "stale")).stdout, /^fresh +unknown +never .* not scanned$/m);
  r = await vigil("posture", "rescan", "--json");
  assert.equal(r.status, 0, r.stderr);
  assert.deepEqual(JSON.parse(r.stdout), { scanned: ["old"], failed: [] });
  rows = await report();
  assert.deepEqual([rows.find((x) => x.vm === "old")?.behind, rows.find((x) => x.vm === "old")?.rulesChanged], [false, false]);
  assert.equal(rows.find((x) => x.vm === "fresh")?.state, "unknown", "never scanned: not scanned by a rescan");
  const rescanAudit = (await d.deps.audit.list({})).filter((e) => e.action === "posture.rescan" || (e.action === "posture.scan" && e.actor === "system"));
  assert.ok(rescanAudit.some((e) => e.action === "posture.scan" && e.actor === "system" && e.result === "ok"), "the rescan is audited as the system's scan");
  assert.ok(rescanAudit.some((e) => e.action === "posture.rescan" && e.result === "ok"), "and the request for it");
  assert.match((await vigil("posture", "rescan")).stdout, /Nothing was behind/);

  await d.repo.update((await d.repo.getByName("old")).id, { state: "running" });
  r = await vigil("scan", "old");
  assert.equal(r.status, 4, "a conflict with the VM's state");
  assert.match(r.stderr, /Cannot scan VM "old" offline: it is running/);
});
