#!/usr/bin/env node
// Runs every test file under src/ and test/ with node:test through tsx. Unit tests (src/**) run first and in
// parallel; integration tests (test/integration/**) boot real VMs under TCG and run one file at a time so two
// cores are not oversubscribed. Extra arguments select files by substring: `node scripts/run-tests.mjs qmp`.
import { spawnSync } from "node:child_process";
import { readdirSync } from "node:fs";
import { join } from "node:path";

function find(dir) {
  let out = [];
  let entries;
  try {
    entries = readdirSync(dir, { withFileTypes: true });
  } catch {
    return out;
  }
  for (const e of entries) {
    const p = join(dir, e.name);
    if (e.isDirectory()) out = out.concat(find(p));
    else if (e.name.endsWith(".test.ts") || e.name.endsWith(".test.tsx")) out.push(p);
  }
  return out.sort();
}

const filters = process.argv.slice(2);
const pick = (files) => (filters.length ? files.filter((f) => filters.some((s) => f.includes(s))) : files);
// The web console's unit tests (web/src/**) run with the daemon's: pure modules and components rendered to markup.
const unit = pick([...find("src"), ...find("web/src")]);
const integration = pick(find("test"));

// One node --test run so the summary at the end covers everything.
const files = [...unit, ...integration];
if (files.length === 0) {
  console.error("no test files matched");
  process.exit(1);
}
const result = spawnSync(
  process.execPath,
  ["--import", "tsx", "--test", "--test-concurrency=1", "--test-timeout=900000", ...files],
  { stdio: "inherit", env: { ...process.env, VIGIL_LOG_LEVEL: process.env.VIGIL_LOG_LEVEL ?? "silent", TSX_TSCONFIG_PATH: process.env.TSX_TSCONFIG_PATH ?? "tsconfig.test.json" } },
);
process.exit(result.status ?? 1);
