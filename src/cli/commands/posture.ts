/** `vigil posture`: a VM's posture and the network-access gate's policies (docs/transience.md). */
import type { Command } from "commander";
import { call } from "../client.ts";
import { printJson, printTable } from "../output.ts";
import { vmPath } from "./common.ts";

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
    .option("--vulnerable-at <severity>", "pending updates at or above this make the VM vulnerable (unimportant, unknown, low, medium, high, critical)", "high")
    .action(async (scope: string, o: { gate: string; maxAgeDays: string; vulnerableAt: string }) => {
      const body = { gate: onOff(o.gate), maxScanAgeDays: Number(o.maxAgeDays), vulnerableAt: o.vulnerableAt };
      const r = await call<{ scope: string; policy: typeof body }>("PUT", `/v1/posture/policies/${encodeURIComponent(scope)}`, body);
      process.stdout.write(`gate policy ${r.scope}: gate ${r.policy.gate ? "on" : "off"}, stale after ${r.policy.maxScanAgeDays} days, vulnerable at ${r.policy.vulnerableAt}\n`);
    });
}
