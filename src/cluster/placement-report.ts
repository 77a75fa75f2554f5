/**
 * What `vigil cluster balance` and `vigil cluster consolidate` print: a table of the plan, the hosts before and
 * after, and the reasoning in sentences; or, for `--json`, the same plan as a stable object. Pure: plan in, text
 * or JSON out, so the CLI only prints and the wording is tested here.
 */
import type { BalancePlan, ConsolidationPlan, HostSummary } from "./placement.ts";
import { pct, points } from "./placement.ts";

type Row = Record<string, string>;

/** Aligned columns, two spaces apart, the header first (the CLI's table layout). */
function table(rows: Row[], columns: [key: string, header: string][]): string[] {
  const widths = columns.map(([k, h]) => Math.max(h.length, ...rows.map((r) => (r[k] ?? "-").length)));
  const line = (cells: string[]) => cells.map((c, i) => c.padEnd(widths[i]!)).join("  ").trimEnd();
  return [line(columns.map(([, h]) => h)), ...rows.map((r) => line(columns.map(([k]) => r[k] ?? "-")))];
}

/** One row per host: memory load and VM count before and after the plan. */
function hostRows(before: HostSummary[], after: HostSummary[]): Row[] {
  const next = new Map(after.map((h) => [h.host, h]));
  return before.map((b) => {
    const a = next.get(b.host) ?? b;
    return {
      host: b.host,
      ready: b.ready ? "yes" : "no",
      memory: `${b.memUsedMiB}/${b.memUsableMiB} MiB`,
      before: pct(b.load),
      after: pct(a.load),
      vms: b.vms === a.vms ? String(b.vms) : `${b.vms} → ${a.vms}`,
    };
  });
}

const HOST_COLUMNS: [string, string][] = [["host", "HOST"], ["ready", "READY"], ["memory", "USED BEFORE"], ["before", "LOAD BEFORE"], ["after", "LOAD AFTER"], ["vms", "VMS"]];

const mib = (n: number) => `${n} MiB`;
const count = (n: number, noun: string) => `${n} ${noun}${n === 1 ? "" : "s"}`;

/** `vigil cluster balance` for people. */
export function formatBalance(plan: BalancePlan): string {
  const out: string[] = [];
  const n = plan.moves.length;
  out.push(
    n === 0
      ? `No migration recommended: memory load spread ${points(plan.spreadBefore)}.`
      : `${count(n, "migration")} recommended: memory load spread ${points(plan.spreadBefore)} → ${points(plan.spreadAfter)}.`,
  );
  if (n > 0) {
    out.push("");
    out.push(
      ...table(
        plan.moves.map((m, i) => ({ n: String(i + 1), vm: m.vm, from: m.from, to: m.to, memory: mib(m.memoryMiB), vcpus: String(m.vcpus), spread: points(m.spreadAfter) })),
        [["n", "#"], ["vm", "VM"], ["from", "FROM"], ["to", "TO"], ["memory", "MEMORY"], ["vcpus", "VCPUS"], ["spread", "SPREAD AFTER"]],
      ),
    );
  }
  out.push("", ...table(hostRows(plan.before, plan.after), HOST_COLUMNS));
  out.push("", "Reasoning:");
  plan.moves.forEach((m, i) => out.push(`  ${i + 1}. ${m.reason}`));
  for (const note of plan.notes) out.push(`  - ${note}`);
  return out.join("\n") + "\n";
}

/** `vigil cluster consolidate` for people. */
export function formatConsolidate(plan: ConsolidationPlan): string {
  const out: string[] = [];
  const n = plan.emptied.length;
  out.push(
    n === 0
      ? "No host can be emptied."
      : `${count(n, "host")} can be emptied: ${plan.emptied.map((e) => `"${e.host}"`).join(", ")} (${count(plan.emptied.reduce((s, e) => s + e.moves.length, 0), "migration")}).`,
  );
  if (n > 0) {
    const rows: Row[] = plan.emptied.flatMap((e) =>
      e.moves.length === 0 ? [{ host: e.host, vm: "-", to: "-", memory: "(already empty)" }] : e.moves.map((m) => ({ host: e.host, vm: m.vm, to: m.to, memory: mib(m.memoryMiB), vcpus: String(m.vcpus) })),
    );
    out.push("", ...table(rows, [["host", "EMPTY"], ["vm", "VM"], ["to", "TO"], ["memory", "MEMORY"], ["vcpus", "VCPUS"]]));
  }
  out.push("", ...table(hostRows(plan.before, plan.after), HOST_COLUMNS));
  out.push("", "Reasoning:");
  for (const e of plan.emptied) out.push(`  "${e.host}": ${e.reason}`);
  for (const k of plan.kept) out.push(`  "${k.host}": ${k.reason}`);
  for (const note of plan.notes) out.push(`  - ${note}`);
  return out.join("\n") + "\n";
}

/** One host in the JSON reports. */
export interface HostReportJson {
  host: string;
  ready: boolean;
  memUsableMiB: number;
  memUsedBeforeMiB: number;
  memUsedAfterMiB: number;
  loadBefore: number;
  loadAfter: number;
  vmsBefore: number;
  vmsAfter: number;
}

function hostsJson(before: HostSummary[], after: HostSummary[]): HostReportJson[] {
  const next = new Map(after.map((h) => [h.host, h]));
  return before.map((b) => {
    const a = next.get(b.host) ?? b;
    return { host: b.host, ready: b.ready, memUsableMiB: b.memUsableMiB, memUsedBeforeMiB: b.memUsedMiB, memUsedAfterMiB: a.memUsedMiB, loadBefore: b.load, loadAfter: a.load, vmsBefore: b.vms, vmsAfter: a.vms };
  });
}

export interface BalanceReportJson {
  kind: "balance";
  spreadBefore: number;
  spreadAfter: number;
  moves: { vm: string; from: string; to: string; memoryMiB: number; vcpus: number; spreadAfter: number; reason: string }[];
  hosts: HostReportJson[];
  notes: string[];
}

/** `vigil cluster balance --json`. */
export function balanceJson(plan: BalancePlan): BalanceReportJson {
  return {
    kind: "balance",
    spreadBefore: plan.spreadBefore,
    spreadAfter: plan.spreadAfter,
    moves: plan.moves.map((m) => ({ vm: m.vm, from: m.from, to: m.to, memoryMiB: m.memoryMiB, vcpus: m.vcpus, spreadAfter: m.spreadAfter, reason: m.reason })),
    hosts: hostsJson(plan.before, plan.after),
    notes: plan.notes,
  };
}

export interface ConsolidateReportJson {
  kind: "consolidate";
  emptied: { host: string; reason: string; moves: { vm: string; to: string; memoryMiB: number; vcpus: number }[] }[];
  kept: { host: string; reason: string }[];
  hosts: HostReportJson[];
  notes: string[];
}

/** `vigil cluster consolidate --json`. */
export function consolidateJson(plan: ConsolidationPlan): ConsolidateReportJson {
  return {
    kind: "consolidate",
    emptied: plan.emptied.map((e) => ({ host: e.host, reason: e.reason, moves: e.moves.map((m) => ({ vm: m.vm, to: m.to, memoryMiB: m.memoryMiB, vcpus: m.vcpus })) })),
    kept: plan.kept.map((k) => ({ host: k.host, reason: k.reason })),
    hosts: hostsJson(plan.before, plan.after),
    notes: plan.notes,
  };
}
