/**
 * The web console end to end, in a real headless Chromium (Debian's, driven by playwright-core) against a real
 * daemon on 127.0.0.1 and a booted tiny guest: sign in with a token, create and start a VM, type into its serial
 * console and see the guest answer, ask its agent (processes, an allow-listed command), see the IDS finding appear
 * when the test tampers with the guest's syscall table and in a sweep run from the page, take a snapshot and revert
 * to it, make a group, and an auditor who sees no controls and whose forced request is denied and audited. Then a
 * network made and deleted from the Networks page, the stale-fleet report with a rescan, the export on the Tasks page, and on a stopped VM: export it as a bundle the browser
 * downloads, add and remove a firewall rule, raise its security floor, make it a template and back, change its
 * owner, and import the bundle back (a second import refused as a replay unless allowed). Screenshots of each page
 * go to test-artifacts/web/.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Page } from "playwright-core";
import { requireTinyImage, startDaemon, waitFor } from "../harness.ts";
import { launchChromium as launch, shot, typeUntilAnswered } from "../web-browser.ts";
import { RamAttacker } from "../../src/introspection/testing/live-guest.ts";
import { overwriteSyscall } from "../../src/introspection/testing/attacker.ts";
import { whilePaused } from "../../src/introspection/testing/watch-api.ts";
import { detectAccelerator } from "../../src/qemu/accel.ts";

const MEMORY_MIB = 256;

async function signIn(page: Page, base: string, token: string): Promise<void> {
  await page.goto(`${base}/`);
  await page.getByLabel("Token").fill(token);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByTestId("whoami").waitFor();
}


test("web console: sign in, create and start, console, IDS finding, snapshot and revert, an auditor denied", { timeout: 900_000 }, async (t) => {
  requireTinyImage();
  const d = await startDaemon(t, { listen: "127.0.0.1:0" });
  await waitFor(() => d.httpAddress() !== undefined, 10_000, "the HTTP listener");
  const base = `http://${d.httpAddress()}`;
  const add = (name: string, ...args: string[]) => {
    const r = d.cli("user", "add", name, ...args, "--json");
    assert.equal(r.status, 0, r.stderr);
    return (JSON.parse(r.stdout) as { token: string }).token;
  };
  const adminToken = add("ada", "--role", "admin", "--introspect");
  const auditorToken = add("audrey", "--role", "auditor");

  const browser = await launch();
  t.after(() => browser.close());
  const page = await (await browser.newContext({ viewport: { width: 1280, height: 800 } })).newPage();
  const pageErrors: string[] = [];
  page.on("pageerror", (e) => pageErrors.push(e.message));

  // Sign in: a wrong token is refused with the API's message; the right one gives an HttpOnly cookie.
  await page.goto(`${base}/`);
  await shot(page, "01-login");
  await page.getByLabel("Token").fill("not-a-token");
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("alert").waitFor();
  await signIn(page, base, adminToken);
  assert.match(await page.getByTestId("whoami").innerText(), /ada/);
  const cookie = (await page.context().cookies()).find((c) => c.name === "vigil_session");
  assert.ok(cookie?.httpOnly && cookie.sameSite === "Strict", "the session cookie is HttpOnly and SameSite=Strict");
  assert.equal(await page.evaluate("document.cookie"), "", "scripts on the page cannot read the session");
  assert.ok(!page.url().includes(adminToken), "the token is never in a URL");

  // Create a VM from the inventory and start it from its page.
  await page.getByRole("button", { name: "Create VM" }).click();
  await page.getByLabel("Name", { exact: true }).fill("web1");
  await page.getByLabel("Memory (MiB)").fill(String(MEMORY_MIB));
  await page.getByLabel("Purpose").fill("web console e2e");
  await shot(page, "02-create");
  await page.getByRole("button", { name: "Create", exact: true }).click();
  await page.waitForURL(/\/vms\/web1/);
  await page.getByRole("button", { name: "Start" }).click();
  await page.locator(".vm-title .badge.state-running").waitFor({ timeout: 180_000 });
  await shot(page, "03-vm-summary");

  // The console: what is typed reaches the guest's shell, and its answer comes back.
  await page.getByRole("tab", { name: "Console" }).click();
  await page.getByTestId("console-status").filter({ hasText: "open" }).waitFor({ timeout: 30_000 });
  await typeUntilAnswered(page, "echo vigil-$((6*7))", "vigil-42");
  await shot(page, "04-console");

  // The guest agent: its kernel and processes, and an allow-listed command run in the guest.
  await page.getByRole("tab", { name: "Guest" }).click();
  await page.getByRole("table", { name: "Guest processes" }).locator("tbody tr").first().waitFor({ timeout: 30_000 });
  await page.getByLabel("Command (the agent's allow-list)").fill("uname -s");
  await page.getByRole("button", { name: "Run in the guest" }).click();
  await page
    .getByTestId("exec-result")
    .filter({ hasText: /exit code 0[\s\S]*Linux/ })
    .waitFor({ timeout: 30_000 })
    .catch(async (err: Error) => assert.fail(`${err.message}\nthe tab says: ${await page.getByRole("tabpanel").innerText()}`));
  await page.getByRole("button", { name: "Ping the agent" }).click();
  await page.getByRole("status").filter({ hasText: /round trips: .* ms/ }).waitFor({ timeout: 30_000 });
  await shot(page, "04b-guest");

  // Graphs draw from /v1/vms/NAME/metrics.
  await page.getByRole("tab", { name: "Graphs" }).click();
  await page.locator(".chart .uplot").first().waitFor();
  await page.waitForTimeout(4500);
  await shot(page, "05-graphs");

  // IDS: start the watch from the page; the test points a system call into a module's code; the alarm shows.
  await page.getByRole("tab", { name: "IDS" }).click();
  await page.getByRole("button", { name: "Start watch" }).click();
  await page.getByTestId("watch-status").filter({ hasText: /watching, [2-9]\d* sweeps|watching, \d{2,} sweeps/ }).waitFor({ timeout: 180_000 });
  const vm = await d.api<{ pid: number }>("GET", "/v1/vms/web1");
  const a = RamAttacker.open(vm.pid, MEMORY_MIB, detectAccelerator().accel);
  t.after(() => a.close());
  await whilePaused(d, "web1", () => overwriteSyscall(a.model, a.writer, 62, a.sym("__x64_sys_getpid")));
  await page.getByTestId("alarm").filter({ hasText: "syscall-table" }).waitFor({ timeout: 60_000 });
  await shot(page, "06-ids-finding");
  await page.getByRole("button", { name: "Sweep now" }).click();
  await page.getByTestId("sweep-result").filter({ hasText: /syscall-table/ }).waitFor({ timeout: 120_000 });
  await shot(page, "06b-ids-sweep");

  // Snapshot, then revert to it: a new generation with a new vmgenid.
  const before = await d.api<{ generation: number; vmgenid: string }>("GET", "/v1/vms/web1");
  await page.getByRole("tab", { name: "Snapshots" }).click();
  await page.getByLabel("Snapshot name").fill("s1");
  await page.getByRole("button", { name: "Take snapshot" }).click();
  await page.getByTestId("snapshot-s1").waitFor({ timeout: 120_000 });
  await page.getByTestId("snapshot-s1").getByRole("button", { name: "Revert" }).click();
  await shot(page, "07-revert-confirm");
  await page.getByRole("dialog").getByRole("button", { name: "Revert" }).click();
  await page
    .getByRole("dialog")
    .waitFor({ state: "detached", timeout: 180_000 })
    .catch(async (err: Error) => assert.fail(`${err.message}\nthe dialog says: ${await page.getByRole("dialog").innerText()}`));
  const after = await d.api<{ generation: number; vmgenid: string; state: string }>("GET", "/v1/vms/web1");
  assert.ok(after.generation > before.generation, `generation ${before.generation} → ${after.generation}`);
  assert.notEqual(after.vmgenid, before.vmgenid);
  await page.getByRole("tab", { name: "Generations" }).click();
  await page.getByText(`generation ${after.generation}`).waitFor();
  await shot(page, "08-generations");
  for (const tab of ["History", "Data", "Posture", "Network", "Recordings"]) {
    await page.getByRole("tab", { name: tab }).click();
    await page.waitForTimeout(500);
    await shot(page, `09-${tab.toLowerCase()}`);
  }

  // The audit log page, and verify from the UI.
  await page.getByRole("link", { name: "Audit log" }).click();
  await page.getByRole("button", { name: "Verify the log" }).click();
  await page.getByTestId("verify-result").filter({ hasText: "Intact" }).waitFor({ timeout: 30_000 });
  await shot(page, "10-audit");
  await page.getByRole("link", { name: "Users" }).click();
  await page.getByRole("cell", { name: "audrey", exact: true }).waitFor();
  // A group made from the page, audrey added to it and taken out again.
  await page.getByLabel("New group").fill("ops");
  await page.getByRole("button", { name: "Add group" }).click();
  await page.getByLabel("Add a member to ops").selectOption("audrey");
  await page.getByTestId("group-ops").filter({ hasText: "audrey" }).waitFor({ timeout: 15_000 });
  const groups = await d.api<{ groups: { name: string; members: string[] }[] }>("GET", "/v1/groups");
  assert.deepEqual(groups.groups.find((g) => g.name === "ops")?.members, ["audrey"]);
  await shot(page, "11-users");
  await page.getByRole("button", { name: "Remove audrey from ops" }).click();
  await page.getByTestId("group-ops").filter({ hasText: "no members" }).waitFor({ timeout: 15_000 });
  await page.getByRole("link", { name: "Host and trust" }).click();
  await page.getByText("this site", { exact: true }).waitFor();
  await shot(page, "11b-host");
  await page.getByRole("link", { name: "My tokens" }).click();
  await page.getByRole("button", { name: "Issue token" }).click();
  await page.getByText("New token (shown once)").waitFor();
  await shot(page, "11c-tokens");
  await page.getByRole("link", { name: "Inventory" }).click();
  await page.getByTestId("vm-row-web1").waitFor();
  await page.setViewportSize({ width: 820, height: 1180 });
  await shot(page, "12-inventory-tablet");
  await page.getByRole("button", { name: /Switch to (dark|light) theme/ }).click();
  await shot(page, "13-inventory-other-theme");

  // An auditor: reads the VM, sees no controls and no console; a forced stop is refused and audited.
  const ap = await (await browser.newContext({ viewport: { width: 1280, height: 800 } })).newPage();
  await signIn(ap, base, auditorToken);
  await ap.goto(`${base}/vms/web1`);
  await ap.locator(".vm-title h1").filter({ hasText: "web1" }).waitFor();
  assert.equal(await ap.getByRole("toolbar", { name: "VM actions" }).getByRole("button").count(), 0, "no action buttons for an auditor");
  assert.equal(await ap.getByRole("tab", { name: "Console" }).count(), 0, "no console tab without vm.console");
  await shot(ap, "14-auditor-vm");
  const forced = await ap.evaluate(async () => {
    const s = (await (await fetch("/v1/session")).json()) as { csrf: string };
    const r = await fetch("/v1/vms/web1/stop", { method: "POST", headers: { "content-type": "application/json", "x-vigil-csrf": s.csrf }, body: "{}" });
    return { status: r.status, body: (await r.json()) as { error?: { code?: string } } };
  });
  assert.equal(forced.status, 403);
  assert.equal(forced.body.error?.code, "VIGIL_FORBIDDEN");
  await ap.goto(`${base}/audit`);
  await ap.getByLabel("Result").selectOption("denied");
  await ap.locator("tr.result-denied").filter({ hasText: "audrey" }).first().waitFor({ timeout: 15_000 });
  await shot(ap, "15-auditor-denied-in-audit");
  assert.equal((await d.api<{ state: string }>("GET", "/v1/vms/web1")).state, "running", "the auditor's stop did nothing");

  assert.deepEqual(pageErrors, [], "no uncaught errors in the page");
});

test("web console: export a VM as a bundle the browser downloads, its firewall, template and owner, import it back under another name", { timeout: 600_000 }, async (t) => {
  requireTinyImage();
  const d = await startDaemon(t, { listen: "127.0.0.1:0" });
  await waitFor(() => d.httpAddress() !== undefined, 10_000, "the HTTP listener");
  const base = `http://${d.httpAddress()}`;
  const r = d.cli("user", "add", "ada", "--role", "admin", "--json");
  assert.equal(r.status, 0, r.stderr);
  const token = (JSON.parse(r.stdout) as { token: string }).token;
  await d.api("POST", "/v1/vms", { name: "src1", image: "tiny", memoryMiB: MEMORY_MIB, purpose: "bundle round trip" });
  const dir = mkdtempSync(join(tmpdir(), "vt-webdl-"));
  t.after(() => rmSync(dir, { recursive: true, force: true }));

  const browser = await launch();
  t.after(() => browser.close());
  const page = await (await browser.newContext({ viewport: { width: 1280, height: 800 }, acceptDownloads: true })).newPage();
  const pageErrors: string[] = [];
  page.on("pageerror", (e) => pageErrors.push(e.message));
  await signIn(page, base, token);
  // A network made and deleted from the Networks page (a bridge in this daemon's own namespace).
  await page.getByRole("link", { name: "Networks" }).click();
  await page.getByLabel("Network name").fill("lab1");
  await page.getByLabel("Range (CIDR)").fill("10.79.0.0/24");
  await page.getByRole("button", { name: "Create network" }).click();
  await page.getByTestId("net-lab1").filter({ hasText: "10.79.0.0/24" }).waitFor({ timeout: 30_000 });
  await page.getByTestId("net-lab1").getByRole("button", { name: "lab1" }).click();
  await page.getByText("No NICs attached now.").waitFor({ timeout: 15_000 });
  await shot(page, "15b-networks");
  await page.getByTestId("net-lab1").getByRole("button", { name: "Delete" }).click();
  await page.getByRole("dialog").getByRole("button", { name: "Delete" }).click();
  await page.getByText("No networks: VMs have user-mode networking only.").waitFor({ timeout: 30_000 });
  // The stale-fleet report: the stopped, never-scanned VM is listed as such; a rescan has nothing to do.
  await page.getByRole("link", { name: "Stale fleet" }).click();
  await page.getByTestId("stale-src1").filter({ hasText: "not scanned" }).waitFor({ timeout: 15_000 });
  await page.getByRole("button", { name: "Rescan behind VMs now" }).click();
  await page.getByTestId("rescan-outcome").filter({ hasText: "Nothing was behind." }).waitFor({ timeout: 30_000 });
  await shot(page, "15c-stale-fleet");
  // A running VM on a bridged network: its NIC counters, a port forward added and removed, and a 2 s capture
  // downloaded as a pcap — the Network tab's traffic section.
  await d.api("POST", "/v1/networks", { name: "lab2", cidr: "10.78.0.0/24" });
  await d.api("POST", "/v1/vms", { name: "netvm", image: "tiny", memoryMiB: MEMORY_MIB, nics: [{ network: "lab2" }] });
  await d.api("POST", "/v1/vms/netvm/start", { wait: true });
  await page.goto(`${base}/vms/netvm?tab=firewall`);
  await page.getByRole("table", { name: "NIC counters" }).getByRole("row").filter({ hasText: "lab2" }).waitFor({ timeout: 30_000 });
  await page.getByLabel("Host address (127.0.0.0/8)").fill("127.0.0.1:18080");
  await page.getByRole("button", { name: "Add forward" }).click();
  await page.getByTestId("forward-127.0.0.1:18080").waitFor({ timeout: 15_000 });
  await page.getByTestId("forward-127.0.0.1:18080").getByRole("button", { name: "Remove" }).click();
  await page.getByTestId("forward-127.0.0.1:18080").waitFor({ state: "detached", timeout: 15_000 });
  await page.getByLabel("Seconds").fill("2");
  await page.getByRole("button", { name: "Capture traffic" }).click();
  const captureRow = page.getByRole("table", { name: "Captures" }).getByRole("row").filter({ hasText: "net0" });
  await captureRow.getByRole("button", { name: "Download pcap" }).waitFor({ timeout: 30_000 });
  await shot(page, "15d-nic-traffic");
  const [pcap] = await Promise.all([page.waitForEvent("download", { timeout: 30_000 }), captureRow.getByRole("button", { name: "Download pcap" }).click()]);
  const pcapFile = join(dir, "netvm.pcap");
  await pcap.saveAs(pcapFile);
  assert.match(readFileSync(pcapFile).subarray(0, 4).toString("hex"), /^(d4c3b2a1|a1b2c3d4|4d3cb2a1|a1b23c4d)$/, "a pcap file");
  // Gone again, network included: a network left behind would keep this daemon's namespace and its dnsmasq.
  await d.api("POST", "/v1/vms/netvm/kill");
  await d.api("DELETE", "/v1/vms/netvm");
  await d.api("DELETE", "/v1/networks/lab2");
  await page.goto(`${base}/vms/src1`);
  await page.getByRole("button", { name: "Export…" }).click();
  await page.getByLabel("Include its snapshots").check();
  await shot(page, "16-export");
  const [saved] = await Promise.all([page.waitForEvent("download", { timeout: 120_000 }), page.getByRole("dialog").getByRole("button", { name: "Export" }).click()]);
  assert.equal(saved.suggestedFilename(), "src1.vigil");
  const file = join(dir, "src1.vigil");
  await saved.saveAs(file);
  assert.ok(statSync(file).size > 4096, `the bundle has ${statSync(file).size} bytes`);
  const audit = (await d.api<{ records: { action: string; result: string }[] }>("GET", "/v1/audit?tail=true&limit=200")).records;
  assert.ok(audit.some((x) => x.action === "vm.export" && x.result === "ok"), "the export is audited");
  await page.getByRole("tab", { name: "Data" }).click();
  await page.getByText("(downloaded by ada, location unknown)").waitFor({ timeout: 15_000 });
  // The Tasks page: the export, finished once its last byte was sent.
  await page.getByRole("link", { name: "Tasks" }).click();
  await page.getByRole("table", { name: "Finished tasks" }).getByRole("row").filter({ hasText: "POST /v1/vms/src1/export" }).filter({ hasText: "ok (200)" }).waitFor({ timeout: 15_000 });
  await shot(page, "16a-tasks");
  await page.goto(`${base}/vms/src1`);

  // The firewall from the page: a rule added (a new policy version), shown, removed after a confirmation.
  await page.getByRole("tab", { name: "Network" }).click();
  await page.getByLabel("Ports").fill("22");
  await page.getByLabel("Comment").fill("ssh from the lab");
  await page.getByRole("button", { name: "Add rule" }).click();
  await page.getByTestId("fw-rule-1").filter({ hasText: "22" }).waitFor({ timeout: 15_000 });
  await shot(page, "16b-firewall");
  const fw = await d.api<{ version: number; rules: { text: string }[] }>("GET", "/v1/vms/src1/firewall");
  assert.equal(fw.rules.length, 1, JSON.stringify(fw));
  await page.getByTestId("fw-rule-1").getByRole("button", { name: "Remove" }).click();
  await page.getByRole("dialog").getByRole("button", { name: "Remove" }).click();
  await page.getByText("No rules: only the defaults apply.").waitFor({ timeout: 15_000 });
  assert.equal((await d.api<{ rules: unknown[] }>("GET", "/v1/vms/src1/firewall")).rules.length, 0);

  // The security floor: a fact raised; lowering it without force is refused with the API's reason.
  await page.getByRole("tab", { name: "Time and floor" }).click();
  await page.getByLabel("Fact", { exact: true }).fill("kernel");
  await page.getByLabel("Version").fill("6.1.0");
  await page.getByRole("button", { name: "Set", exact: true }).click();
  await page.getByTestId("floor-kernel").filter({ hasText: "6.1.0" }).waitFor({ timeout: 15_000 });
  await page.getByLabel("Version").fill("5.10.0");
  await page.getByRole("button", { name: "Set", exact: true }).click();
  await page.getByRole("tabpanel").getByRole("alert").waitFor({ timeout: 15_000 });
  assert.deepEqual((await d.api<{ floor: Record<string, string> }>("GET", "/v1/vms/src1/vtime")).floor, { kernel: "6.1.0" });
  await shot(page, "16c-floor");

  // Template and back, and a change of owner with its approver, each as the CLI does it.
  await page.getByRole("button", { name: "Make template" }).click();
  await page.getByRole("dialog").getByRole("button", { name: "Make template" }).click();
  await page.getByRole("button", { name: "Thaw template" }).waitFor({ timeout: 30_000 });
  assert.equal((await d.api<{ template: boolean }>("GET", "/v1/vms/src1")).template, true);
  await page.getByRole("button", { name: "Thaw template" }).click();
  await page.getByRole("dialog").getByRole("button", { name: "Thaw" }).click();
  await page.getByRole("button", { name: "Make template" }).waitFor({ timeout: 30_000 });
  await page.getByRole("button", { name: "Change owner…" }).click();
  await page.getByLabel("New owner").fill("user:ada");
  await page.getByLabel("Approved by").fill("root"); // someone other than the requester
  await page.getByRole("dialog").getByRole("button", { name: "Change owner" }).click();
  await page
    .getByRole("dialog")
    .waitFor({ state: "detached", timeout: 15_000 })
    .catch(async (err: Error) => assert.fail(`${err.message}\nthe dialog says: ${await page.getByRole("dialog").innerText()}`));
  assert.equal((await d.api<{ owner: string }>("GET", "/v1/vms/src1")).owner, "user:ada");

  await page.getByRole("link", { name: "Inventory" }).click();
  await page.getByRole("button", { name: "Import bundle…" }).click();
  await page.getByLabel("Bundle file (.vigil)").setInputFiles(file);
  await page.getByLabel("Name (default: the name in the bundle)").fill("copy1");
  await shot(page, "17-import");
  await page.getByRole("dialog").getByRole("button", { name: "Import" }).click();
  await page.waitForURL(/\/vms\/copy1/, { timeout: 120_000 });
  const copy = await d.api<{ name: string; lineage: { kind: string }; purpose: string | null; vmgenid: string }>("GET", "/v1/vms/copy1");
  const source = await d.api<{ vmgenid: string }>("GET", "/v1/vms/src1");
  assert.equal(copy.lineage.kind, "import");
  assert.equal(copy.purpose, "bundle round trip");
  assert.notEqual(copy.vmgenid, source.vmgenid, "the copy has an identity of its own");

  // the same bundle again is a replay: refused with the daemon's reason, nothing created; allowed when asked for
  await page.getByRole("link", { name: "Inventory" }).click();
  await page.getByRole("button", { name: "Import bundle…" }).click();
  await page.getByLabel("Bundle file (.vigil)").setInputFiles(file);
  await page.getByLabel("Name (default: the name in the bundle)").fill("copy2");
  await page.getByRole("button", { name: "Import", exact: true }).click();
  await page.getByRole("dialog").getByRole("alert").waitFor({ timeout: 60_000 });
  await shot(page, "18-import-refused");
  assert.match(await page.getByRole("dialog").getByRole("alert").innerText(), /VIGIL_/);
  assert.equal((await d.api<{ vms: { name: string }[] }>("GET", "/v1/vms")).vms.some((v) => v.name === "copy2"), false);
  await page.getByLabel("Import it even if this site imported it before").check();
  await page.getByRole("button", { name: "Import", exact: true }).click();
  await page.waitForURL(/\/vms\/copy2/, { timeout: 120_000 });
  assert.deepEqual(pageErrors, [], "no uncaught errors in the page");
});
