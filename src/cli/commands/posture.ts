/** `vigil posture`: a VM's posture and the network-access gate's policies (docs/transience.md). */
import { readFileSync } from "node:fs";
import type { Command } from "commander";
import { call } from "../client.ts";
import { printJson, printTable } from "../output.ts";
import { resolve as resolvePath } from "node:path";
import { vmPath } from "./common.ts";
import type { StaleReportRow } from "../../posture/posture-service.ts";

interface PostureView {
  vm: string;
  state: string;
  reasons: string[];
  policy: { scope: string; gate: boolean; maxScanAgeDays: number; vulnerableAt: string };
  quarantined: { since: string; reason: string; actor: string } | null;
  lastScan: { scannedAt: string; how: string; packages: unknown[]; pending: unknown[]; findings: unknown[]; os?: { prettyName?: string } } | null;
  lastRunningAt: string | null;
  lastPatchedAt: string | null;
}

type StaleRow = StaleReportRow;

const onOff = (v: string): boolean => {
  if (v === "on") return true;
  if (v === "off") return false;
  throw new Error(`--gate must be "on" or "off", not "${v}"`);
};

export function registerPosture(program: Command): void {
  const posture = program.command("posture").description("A VM's security posture (scans, pending updates, findings) and the network-access gate");
  posture
    .command("show <vm>", { isDefault: true })
    .description("The VM's posture: state, every reason, its last scan, and the gate policy that applies")
    .option("--json", "machine-readable output")
    .action(async (vmName: string, o: { json?: boolean }) => {
      const p = await call<PostureView>("GET", vmPath(vmName, "/posture"));
      if (o.json) return printJson(p);
      const s = p.lastScan;
      const lines: [string, string][] = [
        ["state", p.state],
        ["last scanned", s ? `${s.scannedAt} (${s.how})` : "never"],
        ["os", s?.os?.prettyName ?? "-"],
        ["packages", s ? String(s.packages.length) : "-"],
        ["pending", s ? String(s.pending.length) : "-"],
        ["findings", s ? String(s.findings.length) : "-"],
        ["last running", p.lastRunningAt ?? "never"],
        ["last patched", p.lastPatchedAt ?? "never"],
        ["policy", `${p.policy.scope}: gate ${p.policy.gate ? "on" : "off"}, stale after ${p.policy.maxScanAgeDays} days, vulnerable at ${p.policy.vulnerableAt}`],
        ["quarantine", p.quarantined ? `since ${p.quarantined.since} by ${p.quarantined.actor}: ${p.quarantined.reason}` : "no"],
      ];
      for (const [k, v] of lines) process.stdout.write(`${k.padEnd(13)} ${v}\n`);
      for (const r of p.reasons) process.stdout.write(`reason        ${r}\n`);
    });
  posture
    .command("stale")
    .description("The stale-fleet report: every dormant VM and template you may read, how far behind its scan is, worst first")
    .option("--json", "machine-readable output")
    .action(async (o: { json?: boolean }) => {
      const r = await call<{ vms: StaleRow[] }>("GET", "/v1/posture/stale");
      if (o.json) return printJson(r.vms);
      const yes = (b: boolean | null) => (b === null ? "?" : b ? "yes" : "no");
      printTable(
        r.vms.map((v) => ({
          vm: v.template ? `${v.vm} (template)` : v.vm,
          state: v.state,
          age: v.ageDays === null ? "never" : `${v.ageDays} d`,
          adv: yes(v.advisoriesChanged),
          rules: yes(v.rulesChanged),
          ran: v.scannedAt === null ? "-" : v.ranSince ? "yes" : "no",
          pending: v.scannedAt === null ? "-" : `${v.pending}${v.worstSeverity ? ` (${v.worstSeverity})` : ""}`,
          findings: v.scannedAt === null ? "-" : String(v.findings),
          behind: v.scannedAt === null ? "not scanned" : v.behind ? "rescan" : "-",
        })),
        [["vm", "VM"], ["state", "POSTURE"], ["age", "SCANNED"], ["adv", "NEW-ADVISORIES"], ["rules", "NEW-RULES"], ["ran", "RAN-SINCE"], ["pending", "PENDING"], ["findings", "FINDINGS"], ["behind", "BEHIND"]],
      );
    });
  posture
    .command("rescan")
    .description("Rescan now every dormant, previously scanned VM whose scan is behind (as the system; each scan audited)")
    .option("--json", "machine-readable output")
    .action(async (o: { json?: boolean }) => {
      const r = await call<{ scanned: string[]; failed: { vm: string; error: string }[] }>("POST", "/v1/posture/rescan", {});
      if (o.json) return printJson(r);
      process.stdout.write(r.scanned.length === 0 && r.failed.length === 0 ? "Nothing was behind: no VM rescanned\n" : `Rescanned ${r.scanned.length}: ${r.scanned.join(", ") || "-"}\n`);
      for (const f of r.failed) process.stdout.write(`failed ${f.vm}: ${f.error}\n`);
      if (r.failed.length > 0) process.exitCode = 1;
    });
  const policy = posture.command("policy").description("Gate policies: default, per VM (vm:NAME) or per label (label:KEY=VALUE)");
  policy
    .command("list")
    .description("The gate policies by scope")
    .option("--json", "machine-readable output")
    .action(async (o: { json?: boolean }) => {
      const r = await call<{ policies: { scope: string; policy: { gate: boolean; maxScanAgeDays: number; vulnerableAt: string }; actor: string; updatedAt: string }[] }>("GET", "/v1/posture/policies");
      if (o.json) return printJson(r.policies);
      printTable(
        r.policies.map((p) => ({ scope: p.scope, gate: p.policy.gate ? "on" : "off", age: String(p.policy.maxScanAgeDays), at: p.policy.vulnerableAt, actor: p.actor, updatedAt: p.updatedAt })),
        [["scope", "SCOPE"], ["gate", "GATE"], ["age", "MAX-AGE-DAYS"], ["at", "VULNERABLE-AT"], ["actor", "BY"], ["updatedAt", "UPDATED"]],
      );
    });
  policy
    .command("set <scope>")
    .description('Set the gate policy of a scope: "default", "vm:NAME" or "label:KEY=VALUE"')
    .requiredOption("--gate <on|off>", "start/resume a VM that is not current in quarantine")
    .option("--max-age-days <n>", "a scan older than this is stale", "7")
    .option("--vulnerable-at <severity>", "pending updates at or above this make the VM vulnerable (unimportant, unknown, low, medium, high, critical)", "unknown")
    .action(async (scope: string, o: { gate: string; maxAgeDays: string; vulnerableAt: string }) => {
      const body = { gate: onOff(o.gate), maxScanAgeDays: Number(o.maxAgeDays), vulnerableAt: o.vulnerableAt };
      const r = await call<{ scope: string; policy: typeof body }>("PUT", `/v1/posture/policies/${encodeURIComponent(scope)}`, body);
      process.stdout.write(`gate policy ${r.scope}: gate ${r.policy.gate ? "on" : "off"}, stale after ${r.policy.maxScanAgeDays} days, vulnerable at ${r.policy.vulnerableAt}\n`);
    });
  posture
    .command("rules <file>")
    .description("Set the YARA rules offline scans use (the file is read here and sent; compiled by the daemon first)")
    .action(async (file: string) => {
      const r = await call<{ rulesSha256: string; bytes: number }>("PUT", "/v1/posture/rules", { rules: readFileSync(file, "utf8") });
      process.stdout.write(`signature rules set: ${r.bytes} bytes, sha256 ${r.rulesSha256}\n`);
    });

  program
    .command("scan <vm>")
    .description("Scan a stopped VM's disks offline, without booting it or mounting anything: packages, pending security updates, signature findings")
    .option("--json", "machine-readable output")
    .action(async (vmName: string, o: { json?: boolean }) => {
      const r = await call<ScanResultView>("POST", vmPath(vmName, "/scan"));
      if (o.json) return printJson(r);
      const s = r.scan;
      process.stdout.write(`${r.vm}: ${r.posture.state}${r.released ? " (released from the gate's quarantine)" : ""}\n`);
      process.stdout.write(`os            ${s.os?.prettyName ?? "-"}\n`);
      process.stdout.write(`packages      ${s.packages.length} (read in ${r.timings.packagesMs} ms; advisories loaded in ${r.timings.advisoriesMs} ms)\n`);
      process.stdout.write(`pending       ${s.pending.length} security update(s)\n`);
      for (const p of s.pending.slice(0, 50)) process.stdout.write(`  ${p.package} ${p.installed} -> ${p.candidate} [${p.severity}]${p.cves.length ? ` ${p.cves.slice(0, 5).join(" ")}${p.cves.length > 5 ? " ..." : ""}` : ""}\n`);
      if (s.pending.length > 50) process.stdout.write(`  ... and ${s.pending.length - 50} more (--json)\n`);
      process.stdout.write(`findings      ${s.findings.length}\n`);
      for (const f of s.findings.slice(0, 50)) process.stdout.write(`  ${f.rule} ${f.path} at ${f.offset} (${f.pattern})\n`);
      for (const n of s.notes.slice(0, 20)) process.stdout.write(`note          ${n}\n`);
      for (const reason of r.posture.reasons) process.stdout.write(`reason        ${reason}\n`);
    });

  const advisories = program.command("advisories").description("The advisory data offline scans compare installed packages against");
  advisories
    .command("update")
    .description("Load and record the advisory data: a Packages index or an apt lists directory (default /var/lib/apt/lists), optionally the security tracker's JSON")
    .option("--from <path>", "a Packages index, or an apt lists directory (its security suite is found from the Release files)")
    .option("--tracker <file>", "the Debian security tracker's JSON, to name CVEs and urgencies")
    .option("--release <codename>", "the release to read from the tracker (default: the index's codename)")
    .option("--json", "machine-readable output")
    .action(async (o: { from?: string; tracker?: string; release?: string; json?: boolean }) => {
      const abs = (p: string | undefined) => (p === undefined ? undefined : resolvePath(p));
      const r = await call<{ sha256: string; indexes: { path: string; packages: number; signature: string; date?: string }[]; tracker?: { release: string; sha256: string } }>("PUT", "/v1/posture/advisories", { ...(o.from ? { from: abs(o.from) } : {}), ...(o.tracker ? { tracker: abs(o.tracker) } : {}), ...(o.release ? { release: o.release } : {}) });
      if (o.json) return printJson(r);
      process.stdout.write(`advisory data ${r.sha256}\n`);
      for (const i of r.indexes) process.stdout.write(`  index ${i.path}: ${i.packages} packages, signature ${i.signature}${i.date ? `, dated ${i.date}` : ""}\n`);
      if (r.tracker) process.stdout.write(`  tracker ${r.tracker.release}: ${r.tracker.sha256}\n`);
    });
}

interface ScanResultView {
  vm: string;
  posture: { state: string; reasons: string[] };
  released: boolean;
  scan: {
    os?: { prettyName?: string };
    packages: unknown[];
    pending: { package: string; installed: string; candidate: string; severity: string; cves: string[] }[];
    findings: { rule: string; path: string; offset: number; pattern: string }[];
    notes: string[];
  };
  timings: { advisoriesMs: number; scanMs: number; packagesMs: number };
}
