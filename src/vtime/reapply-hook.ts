/**
 * The re-apply hook: after a revert forced below a VM's security floor, the site's hook brings the guest back
 * up to the floor from outside ("carry out certain tasks outside the VM"). It is an executable named in the
 * site configuration by an admin — never something a request can name — and runs with a timeout; its outcome
 * goes into the audit record of the revert.
 */
import { execFile } from "node:child_process";
import type { Snapshot } from "../storage/snapshot-repository.ts";
import type { VmRecord } from "../vm/vm-repository.ts";

export function reapplyHook(path: string | undefined, timeoutMs = 600_000) {
  return (vm: VmRecord, snapshot: Snapshot, reason: string): Promise<Record<string, unknown>> => {
    if (!path) return Promise.resolve({ ran: false, note: "no re-apply hook is configured (config.json hooks.reapply)" });
    return new Promise((resolve) => {
      execFile(
        path,
        [],
        {
          timeout: timeoutMs,
          maxBuffer: 1024 * 1024,
          env: { PATH: "/usr/sbin:/usr/bin:/sbin:/bin", VIGIL_VM: vm.name, VIGIL_VM_ID: vm.id, VIGIL_SNAPSHOT: snapshot.name, VIGIL_REASON: reason, VIGIL_FLOOR: JSON.stringify(vm.securityFloor) },
        },
        (err, stdout, stderr) => {
          const code = err ? ((err as NodeJS.ErrnoException & { code?: number | string }).code ?? 1) : 0;
          resolve({ ran: true, hook: path, exitCode: code, output: (stdout + stderr).slice(-2000) });
        },
      );
    });
  };
}
