/** `vigil vtime`: the extra-VM monotonic store (counters and streams that never roll back with the VM). */
import type { Command } from "commander";
import { call } from "../client.ts";
import { printJson, printTable } from "../output.ts";
import { vmPath } from "./common.ts";

/** Adds `vtime` and its subcommands. */
export function registerVtime(program: Command): void {
  const vtime = program.command("vtime").description("The extra-VM monotonic store: state that never rolls back with the VM");
  vtime
    .command("show <vm>")
    .description("Counters and record streams of a VM's store, its namespace and floor")
    .option("--json", "machine-readable output")
    .action(async (vmName: string, o: { json?: boolean }) => {
      const r = await call<{ namespace: string; floor: Record<string, string>; counters: Array<Record<string, unknown>>; streams: Array<Record<string, unknown>>; problems: string[] }>("GET", vmPath(vmName, "/vtime"));
      if (o.json) return printJson(r);
      process.stdout.write(`namespace ${r.namespace}\n`);
      const floor = Object.entries(r.floor);
      if (floor.length === 0) process.stdout.write("floor: none\n");
      for (const [fact, value] of floor) process.stdout.write(`floor: ${fact} ${value}\n`);
      printTable(r.counters, [
        ["name", "COUNTER"],
        ["value", "VALUE"],
        ["updatedAt", "UPDATED"],
      ]);
      if (r.streams.length) printTable(r.streams, [["stream", "STREAM"], ["records", "RECORDS"]]);
      for (const p of r.problems) process.stdout.write(`problem: ${p}\n`);
    });
  vtime
    .command("link <vm>")
    .description("Let VM share another VM's store (a clone continuing its parent's counters)")
    .requiredOption("--to <source>", "the VM whose store to share")
    .action(async (vmName: string, o: { to: string }) => {
      const r = await call<{ namespace: string }>("POST", vmPath(vmName, "/vtime/link"), { source: o.to });
      process.stdout.write(`VM ${vmName} now shares the store of ${o.to} (namespace ${r.namespace})\n`);
    });
}
