/**
 * `vigil vm` commands that copy or fork a VM and guard its rollbacks: template, clone, export/import (signed
 * bundles), the generation tree and the security floor a revert may not go below.
 */
import type { Command } from "commander";
import { basename, resolve as resolvePath } from "node:path";
import { ApiError, call, download, upload } from "../client.ts";
import { clearLine, printJson, printTable, progressLine } from "../output.ts";
import { collect, keyValues, vmPath, withProgress, writableOutput, type Vm } from "./common.ts";

/** Adds template, clone, export, import, generations and floor to the `vm` group. */
export function registerVmLineage(vm: Command): void {
  vm.command("template <name>")
    .description("Freeze a stopped VM as a read-only template (--undo thaws one no clone depends on)")
    .option("--undo", "thaw the template")
    .option("--json", "machine-readable output")
    .action(async (name: string, o: { undo?: boolean; json?: boolean }) => {
      const v = await call<Vm>("POST", vmPath(name, "/template"), { undo: o.undo ?? false });
      if (o.json) return printJson(v);
      process.stdout.write(o.undo ? `VM ${name} is no longer a template\n` : `VM ${name} is now a template\n`);
    });

  vm.command("clone <source> <name>")
    .description("Clone a VM with fresh identity: --linked (overlay on a template, the default for templates) or --full")
    .option("--linked", "qcow2 overlay on the template's disks")
    .option("--full", "an independent copy")
    .option("--from-snapshot <snapshot>", "start from that snapshot's disk state")
    .option("--purpose <text>", "what the clone is for (default: the source's)")
    .option("--approver <name>", "who approved it (default: the source's approver)")
    .option("--expires <date>", "expiry: YYYY-MM-DD (end of day, UTC) or ISO time (default: the source's)")
    .option("--force", "clone from a snapshot below the source's security floor (needs --reason)")
    .option("--reason <text>", "why the forced clone is needed (recorded)")
    .option("--json", "machine-readable output")
    .action(async (source: string, name: string, o: { linked?: boolean; full?: boolean; fromSnapshot?: string; purpose?: string; approver?: string; expires?: string; force?: boolean; reason?: string; json?: boolean }) => {
      if (o.linked && o.full) throw new ApiError("VIGIL_BAD_REQUEST", "Use either --linked or --full", 0, "mode");
      const body = {
        name,
        ...(o.linked ? { mode: "linked" } : o.full ? { mode: "full" } : {}),
        ...(o.fromSnapshot ? { fromSnapshot: o.fromSnapshot } : {}),
        ...(o.purpose ? { purpose: o.purpose } : {}),
        ...(o.approver ? { approver: o.approver } : {}),
        ...(o.expires ? { expiresAt: o.expires } : {}),
        ...(o.force ? { force: true } : {}),
        ...(o.reason !== undefined ? { reason: o.reason } : {}),
      };
      const v = await withProgress(`Cloning ${source}`, (rid) => call<Vm>("POST", vmPath(source, "/clone"), body, undefined, { requestId: rid }));
      if (o.json) return printJson(v);
      process.stdout.write(`Cloned ${source} → ${v.name} (${(v.lineage as { linked?: boolean }).linked ? "linked" : "full"}, vmgenid ${v.vmgenid})\n`);
    });

  vm.command("export <name>")
    .description("Write a VM as one signed .vigil bundle")
    .requiredOption("-o, --output <file>", "the bundle file to write")
    .option("--with-snapshots", "include the snapshot tree")
    .option("--memory", "capture the running VM's memory too (it resumes where it was after import)")
    .option("--valid-until <time>", "ISO time after which every importer refuses the bundle")
    .action(async (name: string, o: { output: string; withSnapshots?: boolean; memory?: boolean; validUntil?: string }) => {
      const out = writableOutput("-o", o.output);
      // The request id withProgress follows: the daemon's compress/send progress arrives under it.
      const bytes = await withProgress(`Exporting ${name}`, (requestId) =>
        download(vmPath(name, "/export"), { withSnapshots: o.withSnapshots ?? false, memory: o.memory ?? false, ...(o.validUntil !== undefined ? { expiresAt: o.validUntil } : {}) }, out, { requestId, headers: { "x-vigil-output": out }, onBytes: (d, t) => progressLine(`Writing ${basename(out)}`, d, t) }),
      );
      clearLine();
      process.stdout.write(`Exported ${name} to ${out} (${(bytes / 1048576).toFixed(1)} MiB)\n`);
    });

  vm.command("import <file>")
    .description("Create a VM from a .vigil bundle; verified completely (signer, sizes, hashes) before anything is created")
    .option("--name <name>", "name of the new VM (default: the name in the bundle)")
    .option("--purpose <text>", "what the VM is for (default: the purpose in the bundle)")
    .option("--approver <name>", "who approved it (never taken from the bundle)")
    .option("--expires <date>", "expiry: YYYY-MM-DD (end of day, UTC) or ISO time (never taken from the bundle)")
    .option("--allow-replay", "import a bundle this site imported before (recorded in the audit log)")
    .option("--host <host>", "on a cluster manager: the host to import onto (default: where placement puts a 256 MiB VM)")
    .option("--json", "machine-readable output")
    .action(async (file: string, o: { name?: string; purpose?: string; approver?: string; expires?: string; allowReplay?: boolean; host?: string; json?: boolean }) => {
      const abs = resolvePath(file);
      const query = new URLSearchParams({
        source: abs,
        ...(o.name ? { name: o.name } : {}),
        ...(o.purpose ? { purpose: o.purpose } : {}),
        ...(o.approver ? { approver: o.approver } : {}),
        ...(o.expires ? { expiresAt: o.expires } : {}),
        ...(o.allowReplay ? { allowReplay: "true" } : {}),
        ...(o.host ? { host: o.host } : {}),
      });
      const v = await withProgress(`Importing ${basename(abs)}`, (rid) => upload<Vm>(`/v1/vms/import?${query.toString()}`, abs, { requestId: rid, onBytes: (d, t) => progressLine("Uploading", d, t) }));
      clearLine();
      if (o.json) return printJson(v);
      process.stdout.write(`Imported ${basename(abs)} as VM ${v.name} (${v.id as string})${typeof v.host === "string" ? ` on ${v.host}` : ""}\n`);
    });

  vm.command("generations <name>")
    .description("The VM's generation tree: every fork (revert, restore, clone, import) with its vmgenid")
    .option("--json", "machine-readable output")
    .action(async (name: string, o: { json?: boolean }) => {
      const r = await call<{ current: number; generations: Array<Record<string, unknown>> }>("GET", vmPath(name, "/generations"));
      if (o.json) return printJson(r);
      printTable(
        r.generations.map((g) => ({ ...g, mark: g.generation === r.current ? "*" : "" })),
        [
          ["mark", ""],
          ["generation", "GEN"],
          ["parentGeneration", "PARENT"],
          ["reason", "REASON"],
          ["snapshot", "SNAPSHOT"],
          ["vmgenid", "VMGENID"],
          ["reseed", "RESEED"],
          ["createdBy", "BY"],
          ["createdAt", "AT"],
        ],
      );
    });

  vm.command("floor <name>")
    .description("Show or raise the VM's security floor: facts a revert may not go below (patchLevel, signatures, credentialEpoch, firewallPolicy, ...)")
    .option("--set <fact=value>", "raise a fact (repeatable)", collect)
    .option("--force", "allow lowering a fact (needs --reason)")
    .option("--reason <text>", "why")
    .option("--json", "machine-readable output")
    .action(async (name: string, o: { set?: string[]; force?: boolean; reason?: string; json?: boolean }) => {
      let floor: Record<string, string>;
      if (o.set) {
        const facts = keyValues("set", o.set, "FACT=VALUE");
        floor = (await call<{ floor: Record<string, string> }>("PUT", vmPath(name, "/floor"), { facts, force: o.force ?? false, ...(o.reason ? { reason: o.reason } : {}) })).floor;
      } else {
        floor = (await call<{ floor: Record<string, string> }>("GET", vmPath(name, "/vtime"))).floor;
      }
      if (o.json) return printJson(floor);
      if (Object.keys(floor).length === 0) process.stdout.write(`VM ${name} has no security floor\n`);
      for (const [k, v] of Object.entries(floor)) process.stdout.write(`${k.padEnd(18)} ${v}\n`);
    });
}
