/** `vigil snapshot`: a VM's snapshot tree (create, list, delete, revert as a fork). */
import type { Command } from "commander";
import { ApiError, call } from "../client.ts";
import { printJson } from "../output.ts";
import { enc, vmPath, withProgress, type Vm } from "./common.ts";

/** Adds `snapshot` and its subcommands. */
export function registerSnapshots(program: Command): void {
  const snapshot = program.command("snapshot").description("Snapshots: a tree per VM");
  snapshot
    .command("create <vm> <name>")
    .description("Take a snapshot: disk-only (guest filesystem frozen when its agent answers), or --memory")
    .option("--memory", "include RAM and device state (running VM)")
    .option("--single-use", "with --memory: may be resumed only once")
    .option("-d, --description <text>", "what it is")
    .option("--json", "machine-readable output")
    .action(async (vmName: string, name: string, o: { memory?: boolean; singleUse?: boolean; description?: string; json?: boolean }) => {
      const s = await withProgress(`Snapshot ${vmName}/${name}`, (rid) =>
        call<Record<string, unknown>>("POST", vmPath(vmName, "/snapshots"), { name, memory: o.memory ?? false, singleUse: o.singleUse ?? false, ...(o.description ? { description: o.description } : {}) }, undefined, { requestId: rid }),
      );
      if (o.json) return printJson(s);
      process.stdout.write(`Snapshot ${name} of ${vmName} taken (${s.kind as string}${s.singleUse ? ", single-use" : ""})\n`);
    });
  snapshot
    .command("list <vm>")
    .description("Draw the VM's snapshot tree")
    .option("--json", "machine-readable output")
    .action(async (vmName: string, o: { json?: boolean }) => {
      type Node = { name: string; parent: string | null; kind: string; createdAt: string; createdBy: string; current: boolean; singleUse: boolean; resumedCount: number; vmStateSize: number };
      const r = await call<{ snapshots: Node[] }>("GET", vmPath(vmName, "/snapshots"));
      if (o.json) return printJson(r);
      const childrenOf = (parent: string | null) => r.snapshots.filter((s) => s.parent === parent);
      const draw = (nodes: Node[], prefix: string) => {
        nodes.forEach((n, i) => {
          const last = i === nodes.length - 1;
          const flags = [n.kind, n.singleUse ? `single-use, resumed ${n.resumedCount}×` : "", n.vmStateSize ? `${(n.vmStateSize / 1048576).toFixed(1)} MiB state` : ""].filter(Boolean).join(", ");
          process.stdout.write(`${prefix}${last ? "└─" : "├─"} ${n.name}${n.current ? "  ← you are here" : ""}  (${flags}; ${n.createdBy}, ${n.createdAt})\n`);
          draw(childrenOf(n.name), prefix + (last ? "   " : "│  "));
        });
      };
      if (r.snapshots.length === 0) process.stdout.write(`VM ${vmName} has no snapshots\n`);
      draw(childrenOf(null), "");
    });
  snapshot
    .command("delete <vm> <name>")
    .description("Delete a snapshot; its children move up to its parent")
    .action(async (vmName: string, name: string) => {
      await withProgress(`Deleting ${vmName}/${name}`, (rid) => call("DELETE", vmPath(vmName, `/snapshots/${enc(name)}`), undefined, undefined, { requestId: rid }));
      process.stdout.write(`Snapshot ${name} of ${vmName} deleted\n`);
    });
  snapshot
    .command("revert <vm> <name>")
    .description("Go back to a snapshot as a fork: new vmgenid, generation+1, fresh QEMU process")
    .option("--force", "revert even below the VM's security floor (needs --reason; runs the re-apply hook)")
    .option("--reason <text>", "why a forced revert is needed")
    .option("--unsafe-keep-vmgenid", "admins only, for demonstrations: resume WITHOUT a new vmgenid, so the guest does not reseed")
    .option("--json", "machine-readable output")
    .action(async (vmName: string, name: string, o: { force?: boolean; reason?: string; unsafeKeepVmgenid?: boolean; json?: boolean }) => {
      if (o.reason !== undefined && !o.force) throw new ApiError("VIGIL_BAD_REQUEST", "--reason is only meaningful with --force (a forced revert below the security floor)", 0, "reason");
      const r = await withProgress(`Reverting ${vmName} to ${name}`, (rid) =>
        call<{ vm: Vm; generation: number; forced: boolean }>("POST", vmPath(vmName, `/snapshots/${enc(name)}/revert`), { force: o.force ?? false, unsafeKeepVmgenid: o.unsafeKeepVmgenid ?? false, ...(o.reason ? { reason: o.reason } : {}) }, undefined, { requestId: rid }),
      );
      if (o.json) return printJson(r);
      process.stdout.write(`VM ${vmName} reverted to ${name}: generation ${r.generation}, vmgenid ${r.vm.vmgenid}, ${r.vm.state}${r.forced ? " (forced below the security floor)" : ""}\n`);
    });
}
