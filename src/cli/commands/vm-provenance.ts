/** `vigil vm` commands about ownership and where a VM's data lives: chown, history, where, purge. */
import type { Command } from "commander";
import { call } from "../client.ts";
import { printJson, printTable } from "../output.ts";
import { vmPath } from "./common.ts";

/** Adds chown, history, where and purge to the `vm` group. */
export function registerVmProvenance(vm: Command): void {
  vm.command("chown <name> <owner>")
    .description("Transfer ownership to user:NAME or group:NAME; the approver is recorded")
    .requiredOption("--approver <name>", "who approved the transfer")
    .option("--reason <text>", "why")
    .option("--json", "machine-readable output")
    .action(async (name: string, owner: string, o: { approver: string; reason?: string; json?: boolean }) => {
      const r = await call<Record<string, string>>("POST", vmPath(name, "/chown"), { owner, approver: o.approver, ...(o.reason ? { reason: o.reason } : {}) });
      if (o.json) return printJson(r);
      process.stdout.write(`VM ${name}: owner ${r.previousOwner} → ${r.owner} (approved by ${r.approver})\n`);
    });

  vm.command("history <name>")
    .description("Who created and touched a VM, where it came from, where it has been")
    .option("--json", "machine-readable output")
    .action(async (name: string, o: { json?: boolean }) => {
      const h = await call<{ id: string; exists: boolean; owner: string; createdBy: string; createdAt: string; lineage: Record<string, unknown> | null; locations: Array<Record<string, string | null>>; events: Array<Record<string, unknown> & { target: { name: string } }> }>("GET", vmPath(name, "/history"));
      if (o.json) return printJson(h);
      process.stdout.write(`VM ${name} (${h.id})${h.exists ? "" : " — destroyed"}\n`);
      process.stdout.write(`  owner ${h.owner}; created by ${h.createdBy} at ${h.createdAt}; lineage ${JSON.stringify(h.lineage)}\n`);
      process.stdout.write("Where it has been:\n");
      for (const l of h.locations) process.stdout.write(`  ${l.since} → ${l.until ?? "now"}  ${l.host}:${l.path}\n`);
      process.stdout.write("What happened:\n");
      printTable(
        h.events.map((e) => ({ ...e, details: JSON.stringify(e.details).slice(0, 80) })),
        [
          ["seq", "SEQ"],
          ["time", "TIME"],
          ["actor", "WHO"],
          ["action", "WHAT"],
          ["result", "RESULT"],
          ["details", "DETAILS"],
        ],
      );
    });

  vm.command("where <name>")
    .description("Every place a VM's data lives now (and lived)")
    .option("--json", "machine-readable output")
    .action(async (name: string, o: { json?: boolean }) => {
      const w = await call<{ live: Array<Record<string, unknown>>; removed: Array<Record<string, unknown>> }>("GET", vmPath(name, "/where"));
      if (o.json) return printJson(w);
      const cols: Array<[string, string]> = [
        ["purpose", "PURPOSE"],
        ["host", "HOST"],
        ["path", "PATH"],
        ["size", "SIZE"],
        ["createdAt", "SINCE"],
      ];
      process.stdout.write("Lives now:\n");
      printTable(w.live, cols);
      if (w.removed.length > 0) {
        process.stdout.write("Lived (removed):\n");
        printTable(w.removed, [...cols, ["removedAt", "REMOVED"], ["removedHow", "HOW"]]);
      }
    });

  vm.command("purge <name>")
    .description("Destroy a VM and overwrite every registered copy of its data vigil can reach")
    .option("--force", "kill it first if it is running")
    .option("--json", "machine-readable output")
    .action(async (name: string, o: { force?: boolean; json?: boolean }) => {
      const r = await call<{ destroyed: Array<{ path: string; purpose: string }>; unreachable: Array<{ path: string; host: string; why: string }>; derived: Array<{ name: string; kind: string; from: string }> }>("POST", vmPath(name, "/purge"), { force: o.force ?? false });
      if (o.json) return printJson(r);
      for (const f of r.destroyed) process.stdout.write(`destroyed    ${f.purpose.padEnd(12)} ${f.path}\n`);
      for (const f of r.unreachable) process.stdout.write(`UNREACHABLE  ${f.host}:${f.path} (${f.why})\n`);
      for (const v of r.derived) process.stdout.write(`DERIVED      VM ${v.name} (${v.kind} of ${v.from}) holds a copy of this VM's data: purge it too if it must go\n`);
      process.stdout.write(`VM ${name} purged: ${r.destroyed.length} file(s) destroyed, ${r.unreachable.length} out of reach${r.derived.length ? `, ${r.derived.length} derived VM(s) not touched` : ""}\n`);
    });
}
