/**
 * `npm run bench -- web [--sizes 1000,10000] [--runs 5]`: the web console with a large inventory.
 * - The API's VM list over HTTP with a bearer token: the full list (`vigil vm list --json`, 20 calls) as the
 *   baseline, and `?view=summary`, what the console's inventory asks for (100 calls): p50 and p99 at each size.
 *   Goal: p99 < 50 ms at 10,000 VMs.
 * - Time to first paint (the paint timing API) and to an interactive inventory (the first VM row is in the DOM and
 *   the list has its row count) in Debian's headless Chromium, `--runs` fresh page loads at each size.
 * The smallest size is the baseline each larger one is compared with in the same run: the ratio says how the cost
 * grows with the inventory (a virtualised list should keep it near 1 apart from fetching the JSON).
 * VMs are created through the API (defined, not started), so the inventory is exactly what a user would have.
 */
import { createServer } from "node:net";
import { chromium } from "playwright-core";
import { benchDaemon, median, percentile } from "./lib.ts";

function arg(args: string[], name: string, dflt: string): string {
  const i = args.indexOf(name);
  return i >= 0 && args[i + 1] ? args[i + 1]! : dflt;
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const a = s.address();
      s.close(() => resolve(typeof a === "object" && a ? a.port : 0));
    });
  });
}

export async function run(args: string[]): Promise<void> {
  const sizes = arg(args, "--sizes", "1000,10000").split(",").map(Number).sort((a, b) => a - b);
  const runs = Number(arg(args, "--runs", "5"));
  const port = await freePort();
  // One owner holds every VM: its quota is raised past the largest size (the default is 100 VMs).
  const d = await benchDaemon({}, ["--listen", `127.0.0.1:${port}`], { quotas: { vms: 1_000_000 } });
  const base = `http://127.0.0.1:${port}`;
  const browser = await chromium.launch({ executablePath: "/usr/bin/chromium", headless: true, args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run", "--no-proxy-server"] });
  try {
    const added = d.cli(["user", "add", "bench", "--role", "admin", "--json"]);
    if (added.status !== 0) throw new Error(added.stderr);
    const token = (JSON.parse(added.stdout) as { token: string }).token;
    const results: { size: number; fullP50: number; listP50: number; listP99: number; paint: number[]; interactive: number[] }[] = [];
    let have = 0;
    for (const size of sizes) {
      // Create up to `size` VMs, six requests at a time.
      const t0 = performance.now();
      let next = have;
      await Promise.all(
        Array.from({ length: 6 }, async () => {
          while (next < size) {
            const i = next++;
            await d.api("POST", "/v1/vms", { name: `vm-${String(i).padStart(5, "0")}`, memoryMiB: 128, purpose: i % 7 === 0 ? "web front" : "batch", labels: { tier: i % 3 === 0 ? "prod" : "dev" } });
            if (i % 500 === 0) process.stderr.write(`\r  creating VMs: ${i}/${size}`);
          }
        }),
      );
      have = size;
      process.stderr.write(`\r  created ${size} VMs (${((performance.now() - t0) / 1000).toFixed(0)} s)\n`);

      // The full list (`vigil vm list --json`) is the baseline; the summary view is what the console asks for.
      const list = async (path: string, n: number) => {
        const times: number[] = [];
        for (let i = 0; i < n; i++) {
          const s = performance.now();
          const r = await fetch(`${base}${path}`, { headers: { authorization: `Bearer ${token}` } });
          const body = (await r.json()) as { vms: unknown[] };
          times.push(performance.now() - s);
          if (body.vms.length !== size) throw new Error(`${path} has ${body.vms.length} VMs, not ${size}`);
        }
        return times;
      };
      const fullTimes = await list("/v1/vms", 20);
      const times = await list("/v1/vms?view=summary", 100);
      const paint: number[] = [];
      const interactive: number[] = [];
      for (let i = 0; i < runs; i++) {
        const ctx = await browser.newContext({ viewport: { width: 1280, height: 800 } });
        await ctx.addCookies([{ name: "vigil_session", value: token, url: base, httpOnly: true, sameSite: "Strict" }]);
        const page = await ctx.newPage();
        await page.goto(`${base}/`);
        // A locator, not waitForFunction: the console's CSP forbids the eval that a string predicate needs.
        await page.locator(`[aria-rowcount="${size}"] [data-testid^="vm-row-"]`).first().waitFor({ timeout: 120_000 });
        const t = (await page.evaluate(`({ now: performance.now(), fp: performance.getEntriesByType("paint").find((e) => e.name === "first-contentful-paint")?.startTime ?? performance.getEntriesByType("paint")[0]?.startTime ?? -1 })`)) as { now: number; fp: number };
        interactive.push(t.now);
        paint.push(t.fp);
        await ctx.close();
      }
      results.push({ size, fullP50: percentile(fullTimes, 50), listP50: percentile(times, 50), listP99: percentile(times, 99), paint, interactive });
    }
    const b = results[0]!;
    process.stdout.write(`\n## Web console, inventory of N VMs (baseline: ${b.size} VMs; Chromium ${browser.version()}, TCG host)\n`);
    for (const r of results) {
      process.stdout.write(
        `  ${String(r.size).padStart(6)} VMs: GET /v1/vms (full) p50 ${r.fullP50.toFixed(1)} ms | ?view=summary p50 ${r.listP50.toFixed(1)} ms, p99 ${r.listP99.toFixed(1)} ms (goal p99 < 50 ms at 10,000; summary/full p50 ${(r.listP50 / r.fullP50).toFixed(3)})` +
          ` | first contentful paint median ${median(r.paint).toFixed(0)} ms (${r.paint.map((x) => x.toFixed(0)).join(", ")})` +
          ` | interactive inventory median ${median(r.interactive).toFixed(0)} ms (${r.interactive.map((x) => x.toFixed(0)).join(", ")})` +
          (r === b ? "" : ` | ratio vs ${b.size}: list p99 ${(r.listP99 / b.listP99).toFixed(2)}x, interactive ${(median(r.interactive) / median(b.interactive)).toFixed(2)}x`) +
          "\n",
      );
    }
  } finally {
    await browser.close();
    await d.close();
  }
}
