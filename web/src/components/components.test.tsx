// Components rendered to markup (react-dom/server): what they show, their ARIA, and that hostile text from a
// guest or an audit record is escaped, never markup.
import { test } from "node:test";
import assert from "node:assert/strict";
import { renderToStaticMarkup } from "react-dom/server";
import { VirtualList } from "./VirtualList.tsx";
import { StateBadge, VmBadges } from "./Badges.tsx";
import { AuditTable } from "./AuditTable.tsx";
import { Tabs } from "./Tabs.tsx";
import { ProgressBar } from "./Progress.tsx";
import type { AuditRecord, Vm } from "../lib/types.ts";

test("VirtualList renders a window of 10,000 rows, not all of them, with the row count for assistive tech", () => {
  const items = Array.from({ length: 10_000 }, (_, i) => `vm-${i}`);
  const html = renderToStaticMarkup(<VirtualList items={items} rowHeight={36} height={720} label="VMs" rowKey={(s) => s} row={(s) => <span>{s}</span>} />);
  const rows = html.match(/role="row"/g) ?? [];
  assert.ok(rows.length > 0 && rows.length < 40, `${rows.length} rows rendered`);
  assert.match(html, /aria-rowcount="10000"/);
  assert.match(html, /height:360000px/);
  assert.ok(html.includes(">vm-0<") && !html.includes(">vm-9999<"));
});

test("badges: state, expiry, alarm and template, as text", () => {
  assert.match(renderToStaticMarkup(<StateBadge state="running" />), /class="badge state-running">running</);
  const vm = { name: "a", expired: true, expiresAt: "2026-01-01", posture: "infected", template: true } as unknown as Vm;
  const html = renderToStaticMarkup(<VmBadges vm={vm} />);
  assert.match(html, />expired</);
  assert.match(html, />infected</);
  assert.match(html, />template</);
  assert.doesNotMatch(renderToStaticMarkup(<VmBadges vm={{ ...vm, expired: false, expiresAt: null, posture: "current", template: false }} />), /badge/);
});

test("AuditTable escapes whatever a record holds", () => {
  const evil = '<img src=x onerror="alert(1)">';
  const r: AuditRecord = { seq: 1, id: "i", time: "2026-12-07T00:00:00Z", actor: evil, action: "vm.start", target: { kind: "vm", id: null, name: evil }, result: "denied", host: "h", requestId: null, details: { why: evil } };
  const html = renderToStaticMarkup(<AuditTable records={[r]} />);
  assert.ok(!html.includes("<img"), html);
  assert.ok(html.includes("&lt;img"));
  assert.match(html, /badge alarm">denied/);
});

test("Tabs: a tablist, the current tab selected and the only one in the tab order", () => {
  const html = renderToStaticMarkup(<Tabs tabs={[{ id: "summary", label: "Summary" }, { id: "console", label: "Console" }]} current="console" onSelect={() => undefined} />);
  assert.match(html, /role="tablist"/);
  assert.match(html, /id="tab-console" role="tab" aria-selected="true" tabindex="0"/);
  assert.match(html, /id="tab-summary" role="tab" aria-selected="false" tabindex="-1"/);
});

test("ProgressBar: a labelled progress element with the percentage; a waiting line before the first event", () => {
  assert.match(renderToStaticMarkup(<ProgressBar p={{ what: "copying disk", current: 30, total: 120 }} label="Clone" />), /<progress max="100" value="25" aria-label="Clone: copying disk">/);
  assert.match(renderToStaticMarkup(<ProgressBar p={null} label="Start" />), /Start…/);
  assert.match(renderToStaticMarkup(<ProgressBar p={{ what: "x", current: 5, total: 0 }} label="L" />), /value="0"/);
});

test("ErrorLine announces an error and renders nothing without one; DialogActions shows the busy label and disables submit", async () => {
  const { ErrorLine, DialogActions } = await import("./ErrorLine.tsx");
  assert.equal(renderToStaticMarkup(<ErrorLine error={null} />), "");
  assert.equal(renderToStaticMarkup(<ErrorLine error="<b>no</b>" />), '<p class="error" role="alert">&lt;b&gt;no&lt;/b&gt;</p>');
  const busy = renderToStaticMarkup(<DialogActions onCancel={() => undefined} submit="Create" busy="Creating…" />);
  assert.match(busy, /<button type="submit" class="primary" disabled="">Creating…<\/button>/);
  assert.match(renderToStaticMarkup(<DialogActions onCancel={() => undefined} submit="Kill" danger />), /class="danger">Kill</);
});

test("a migration's progress: its phase alone before QEMU reports, then the share of RAM copied", async () => {
  const { migrationProgress } = await import("../pages/HostsPage.tsx");
  assert.equal(migrationProgress({ phase: "setup", progress: null }), "setup");
  const p = { phase: "ram", ramTransferred: 64 * 1024 * 1024, ramRemaining: 192 * 1024 * 1024, ramTotal: 256 * 1024 * 1024, expectedDowntimeMs: 0 };
  assert.equal(migrationProgress({ phase: "ram", progress: p }), "ram: 25% of RAM (64 MiB of 256 MiB)");
  assert.equal(migrationProgress({ phase: "ram", progress: { ...p, ramTransferred: 300 * 1024 * 1024 } }), "ram: 100% of RAM (300 MiB of 256 MiB)", "never past 100% (dirty pages are copied again)");
});

test("the firewall form makes the API's rule (empty fields left out; ports only for tcp/udp); a guest command line is its words, its output text", async () => {
  const { ruleFromForm } = await import("../pages/vm/FirewallTab.tsx");
  const { argvOf, guestText } = await import("../pages/vm/GuestTab.tsx");
  assert.equal(guestText(Buffer.from("Linux\n").toString("base64")), "Linux\n");
  assert.equal(guestText(Buffer.from([0x61, 0xff, 0x62]).toString("base64")), "a\ufffdb", "invalid UTF-8 is a replacement character");
  assert.equal(guestText("%%%"), "(output not valid base64)");
  const base = { direction: "in", action: "accept", proto: "tcp", ports: " 22 ", peerKind: "any", peer: "", comment: "" };
  assert.deepEqual(ruleFromForm(base), { direction: "in", action: "accept", proto: "tcp", ports: "22" });
  assert.deepEqual(ruleFromForm({ ...base, proto: "icmp" }), { direction: "in", action: "accept", proto: "icmp" }, "no ports for icmp");
  assert.deepEqual(ruleFromForm({ ...base, peerKind: "cidr", peer: "10.77.0.0/24", comment: "lab" }), { direction: "in", action: "accept", proto: "tcp", ports: "22", peer: { cidr: "10.77.0.0/24" }, comment: "lab" });
  assert.deepEqual(ruleFromForm({ ...base, peerKind: "vm", peer: "  " }), { direction: "in", action: "accept", proto: "tcp", ports: "22" }, "an empty peer is anyone");
  assert.deepEqual(argvOf("  uname   -a "), ["uname", "-a"]);
  assert.deepEqual(argvOf("cat '/etc/os release'"), ["cat", "'/etc/os", "release'"], "no shell quoting: the agent runs no shell");
});
