/**
 * Debian's Chromium for the web console's end-to-end tests, through playwright-core: launched with nothing that
 * reaches off the machine (no updates, sync, safe browsing or first-run pings), optionally inside a network
 * namespace; screenshots into test-artifacts/web/; and typing into the serial console until the guest answers.
 */
import assert from "node:assert/strict";
import { chmodSync, existsSync, mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { chromium, type Browser, type Page } from "playwright-core";
import { ROOT } from "./harness.ts";

export const CHROMIUM = "/usr/bin/chromium";
const ARTIFACTS = join(ROOT, "test-artifacts", "web");
const ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-default-apps", "--disable-extensions", "--no-proxy-server"];

/**
 * Chromium, headless. With `netns` it runs inside that namespace (a wrapper script in `workDir` enters it), and
 * accepts the self-signed certificate of a server there.
 */
export async function launchChromium(o: { netns?: string; workDir?: string } = {}): Promise<Browser> {
  assert.ok(existsSync(CHROMIUM), `${CHROMIUM} is missing: set-up (scripts/bootstrap.sh) installs Debian's chromium`);
  if (!o.netns) return chromium.launch({ executablePath: CHROMIUM, headless: true, args: ARGS });
  const wrapper = join(o.workDir!, "chromium-in-netns");
  writeFileSync(wrapper, `#!/bin/sh\nexec nsenter --net=/run/netns/${o.netns} -- ${CHROMIUM} "$@"\n`);
  chmodSync(wrapper, 0o755);
  return chromium.launch({ executablePath: wrapper, headless: true, args: [...ARGS, "--ignore-certificate-errors"] });
}

export async function shot(page: Page, name: string): Promise<void> {
  mkdirSync(ARTIFACTS, { recursive: true });
  await page.screenshot({ path: join(ARTIFACTS, `${name}.png`), fullPage: true });
}

/** Types `command` into the open console tab (up to ten times, a boot may swallow the first) until `answer` shows. */
export async function typeUntilAnswered(page: Page, command: string, answer: string): Promise<void> {
  await page.getByTestId("terminal").click();
  for (let i = 0; i < 10; i++) {
    await page.keyboard.type(command);
    await page.keyboard.press("Enter");
    const seen = await page
      .locator(".xterm-rows", { hasText: answer })
      .waitFor({ timeout: 3000 })
      .then(() => true, () => false);
    if (seen) return;
  }
  assert.fail(`the guest did not answer ${JSON.stringify(answer)} on its console; screen:\n${await page.locator(".xterm-rows").innerText()}`);
}
