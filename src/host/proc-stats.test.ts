/** The /proc readers: fixed texts (a command name with spaces and parentheses, missing fields), and a real process. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { parseLoad1, parseMeminfo, parseProcStatCpuSeconds, parseStatusRssBytes, readHostStats, readProcessStats } from "./proc-stats.ts";

test("/proc/PID/stat: utime + stime counted from the last parenthesis, in seconds of CLK_TCK 100", () => {
  const fields = Array.from({ length: 50 }, (_, i) => String(i + 3));
  fields[11] = "250"; // utime (field 14)
  fields[12] = "50"; // stime (field 15)
  assert.equal(parseProcStatCpuSeconds(`1234 (qemu) (evil) x) ${fields.join(" ")}\n`), 3);
  assert.throws(() => parseProcStatCpuSeconds("1234 (qemu) S 1 2"), /Cannot read \/proc\/PID\/stat/);
  assert.throws(() => parseProcStatCpuSeconds("1234 qemu S"), /no command name/);
});

test("/proc/PID/status VmRSS, /proc/meminfo and /proc/loadavg", () => {
  assert.equal(parseStatusRssBytes("Name:\tqemu\nVmRSS:\t  2048 kB\nThreads:\t4\n"), 2048 * 1024);
  assert.equal(parseStatusRssBytes("Name:\tzombie\nState:\tZ\n"), 0);
  assert.throws(() => parseStatusRssBytes("VmRSS:\tlots kB\n"), /VmRSS/);
  assert.deepEqual(parseMeminfo("MemTotal:  1000 kB\nMemFree: 10 kB\nMemAvailable:  500 kB\n"), { memTotalBytes: 1024000, memAvailableBytes: 512000 });
  assert.throws(() => parseMeminfo("MemTotal: 1 kB\n"), /MemAvailable/);
  assert.equal(parseLoad1("0.52 0.58 0.59 1/467 12345\n"), 0.52);
  assert.throws(() => parseLoad1("high"), /loadavg/);
});

test("a real process: this test's own CPU seconds and RSS agree with what Node says of itself", async () => {
  const t0 = Date.now();
  while (Date.now() - t0 < 50) Math.sqrt(Math.random()); // some CPU time to count
  const s = await readProcessStats(process.pid);
  const usage = process.cpuUsage();
  const nodeSeconds = (usage.user + usage.system) / 1e6;
  assert.ok(s.cpuSeconds > 0 && Math.abs(s.cpuSeconds - nodeSeconds) < 0.5, `${s.cpuSeconds} vs ${nodeSeconds}`);
  const rss = process.memoryUsage().rss;
  assert.ok(s.rssBytes > 1024 * 1024 && Math.abs(s.rssBytes - rss) / rss < 0.25, `${s.rssBytes} vs ${rss}`);
  await assert.rejects(readProcessStats(0), /pid/);

  const h = await readHostStats();
  const total = Number(/MemTotal:\s+(\d+)/.exec(readFileSync("/proc/meminfo", "utf8"))![1]) * 1024;
  assert.equal(h.memTotalBytes, total);
  assert.ok(h.memAvailableBytes > 0 && h.memAvailableBytes <= total);
  assert.ok(h.load1 >= 0);
});
