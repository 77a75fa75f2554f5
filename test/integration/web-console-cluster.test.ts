/**
 * The web console on the cluster manager, end to end: two agents and a manager (test/cluster-topology.ts), Debian's
 * Chromium started inside the manager's network namespace against its HTTPS listener (the site certificate is
 * self-signed, so the browser is told to accept it). Sign in; the inventory's tree holds both hosts and the VM on
 * its host, and a VM another client creates appears without a reload; the hosts page lists them ready; the VM's serial console answers through the manager's WebSocket
 * bridge; the VM migrates live from h1 to h2 from its page, the dialog following the migration to its end.
 * Screenshots go to test-artifacts/web/.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { cluster } from "../cluster-topology.ts";
import { launchChromium, shot, typeUntilAnswered } from "../web-browser.ts";

const URL_ = "https://10.251.0.100:7450";

test("web console on the cluster manager: both hosts, a VM's console through the manager, a live migration from its page", { timeout: 900_000 }, async (t) => {
  const { manager, topo } = await cluster(t, { managerArgs: ["--listen", "10.251.0.100:7450"] });
  const added = manager.cli("user", "add", "ada", "--role", "admin", "--json");
  assert.equal(added.status, 0, added.stderr);
  const token = (JSON.parse(added.stdout) as { token: string }).token;
  await manager.api("POST", "/v1/vms", { name: "wc1", memoryMiB: 128, vcpus: 1, host: "h1" });
  await manager.api("POST", "/v1/vms/wc1/start", { wait: true });

  // The browser lives in the manager's namespace: the only network it has is the test's underlay.
  const work = mkdtempSync(join(tmpdir(), "vt-webcl-"));
  t.after(() => rmSync(work, { recursive: true, force: true }));
  const browser = await launchChromium({ netns: topo.manager.netns, workDir: work });
  t.after(() => browser.close());
  const page = await (await browser.newContext({ viewport: { width: 1280, height: 800 }, ignoreHTTPSErrors: true })).newPage();
  const pageErrors: string[] = [];
  page.on("pageerror", (e) => pageErrors.push(e.message));

  await page.goto(`${URL_}/`);
  await page.getByLabel("Token").fill(token);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByTestId("whoami").waitFor();
  const cookie = (await page.context().cookies()).find((c) => c.name === "vigil_session");
  assert.ok(cookie?.httpOnly && cookie.secure && cookie.sameSite === "Strict", "an HttpOnly, Secure, SameSite=Strict cookie on the manager");

  // The inventory: both hosts in the tree, the VM on h1.
  await page.getByTestId("vm-row-wc1").filter({ hasText: "h1" }).waitFor({ timeout: 30_000 });
  const tree = page.getByRole("tree").first();
  await tree.getByRole("button", { name: /^h1/ }).waitFor();
  await tree.getByRole("button", { name: /^h2/ }).waitFor();
  await shot(page, "20-cluster-inventory");
  // Another client creates a VM through the manager: the open inventory shows it (the manager's cluster events).
  await manager.api("POST", "/v1/vms", { name: "wc2", memoryMiB: 128, vcpus: 1, host: "h2" });
  await page.getByTestId("vm-row-wc2").filter({ hasText: "h2" }).waitFor({ timeout: 30_000 });
  await page.getByRole("link", { name: "Hosts" }).click();
  for (const h of ["h1", "h2"]) await page.getByTestId(`host-${h}`).filter({ hasText: "ready" }).waitFor({ timeout: 15_000 });
  await shot(page, "21-cluster-hosts");

  // The console through the manager's WebSocket bridge to h1's agent.
  await page.goto(`${URL_}/vms/wc1?tab=console`);
  await page.getByTestId("console-status").filter({ hasText: "open" }).waitFor({ timeout: 30_000 });
  await typeUntilAnswered(page, "echo cluster-$((6*7))", "cluster-42");
  await shot(page, "22-cluster-console");

  // A live migration from the page: the dialog follows it to its end; the VM is then on h2, still running.
  await page.getByRole("tab", { name: "Summary" }).click();
  await page.getByRole("button", { name: "Migrate…" }).click();
  await page.getByLabel("To host").selectOption("h2");
  await page.getByRole("dialog").getByRole("button", { name: "Migrate" }).click();
  await page.getByTestId("migration-status").waitFor({ timeout: 60_000 });
  await shot(page, "23-cluster-migrating");
  await page
    .getByTestId("migration-status")
    .filter({ hasText: /^completed: now on h2/ })
    .waitFor({ timeout: 300_000 })
    .catch(async (err: Error) => assert.fail(`${err.message}\nthe dialog says: ${await page.getByRole("dialog").innerText()}`));
  await shot(page, "24-cluster-migrated");
  await page.getByRole("dialog").getByRole("button", { name: "Close" }).click();
  await page.locator(".tabpanel").getByText("h2", { exact: true }).waitFor({ timeout: 15_000 });
  const { vms } = await manager.api<{ vms: { name: string; host: string; state: string }[] }>("GET", "/v1/vms");
  const wc1 = vms.find((v) => v.name === "wc1");
  assert.deepEqual({ host: wc1?.host, state: wc1?.state }, { host: "h2", state: "running" });
  // Recordings and bundles are relayed by the manager too (daemon/manager-forward.ts): the tab lists from the
  // VM's host, and the export dialog is there.
  await page.getByRole("tab", { name: "Recordings" }).click();
  await page.locator(".tabpanel").getByText(/^No recordings\./).waitFor({ timeout: 15_000 });
  await page.getByRole("button", { name: "Export…" }).waitFor();
  assert.deepEqual(pageErrors, [], "no uncaught errors in the page");
});
