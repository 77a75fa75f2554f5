/**
 * Cold migration: a stopped VM moves to another host, all or nothing (docs/cluster.md, "Identity follows the
 * VM"). The source exports its dossier (under its lock, `vm.migrate`), the target imports it as `incoming`,
 * copies each disk in (only the top layer over a base it shares, else all of it), commits it as `stopped`, and
 * only then does the source let go. A failure before the commit aborts the incoming VM on the target (the source
 * never changed); a source that cannot let go after the commit gets the target's copy discarded again (it never
 * ran there), so the VM is in exactly one place either way.
 *
 * The two ends are each a host's own deps: in one process for tests and a manager-less move; the manager calls the
 * same steps on two agents. `readDisk` says where the target reads a source disk from (a path on this machine
 * here; an NBD export over the agents' relay between hosts).
 */
import { VigilError, messageOf, q } from "../errors.ts";
import type { RequestContext } from "../auth/guard.ts";
import { vmLayout } from "../paths.ts";
import { diskFile } from "../vm/vm-view.ts";
import { exportDossier, importDossier, type DossierDeps } from "./dossier.ts";
import { copyDiskIn } from "./disks.ts";

export interface ColdMoveResult {
  vm: string;
  id: string;
  from: string;
  to: string;
  disks: Array<{ name: string; sync: "top" | "full" }>;
  ms: number;
}

/**
 * Moves the stopped VM `vmName` from `source` to `target`, both authorizing `ctx` (`vm.migrate`). On failure the
 * VM is where it was, and the error says which step failed.
 */
export async function moveStopped(source: DossierDeps, target: DossierDeps, ctx: RequestContext, vmName: string): Promise<ColdMoveResult> {
  const t0 = performance.now();
  const dossier = await exportDossier(source, ctx, vmName);
  if (dossier.source.state !== "stopped" && dossier.source.state !== "crashed") {
    throw new VigilError("VIGIL_INVALID_STATE", `Cannot move VM ${q(vmName)} cold: it is ${dossier.source.state} (a live VM moves with a live migration)`);
  }
  const imported = await importDossier(target, dossier, ctx);
  const id = imported.vm.id;
  const srcLayout = vmLayout(source.vmsDir, id);
  const disks: ColdMoveResult["disks"] = [];
  try {
    for (const plan of imported.disks) {
      const d = await copyDiskIn(target, id, plan, diskFile(srcLayout.disksDir, plan.name));
      disks.push({ name: plan.name, sync: d.sync });
    }
    // The source must not have been started meanwhile (its lock is not held across hosts): checked again here.
    const now = await source.vms.recordById(id);
    if (now.state !== "stopped" && now.state !== "crashed") throw new VigilError("VIGIL_INVALID_STATE", `Cannot move VM ${q(vmName)} cold: it was ${now.state} on the source during the copy`);
    await target.vms.commitStopped(id, ctx, { from: source.hostName, disks });
  } catch (err) {
    await target.vms.abortIncoming(id, ctx, `cold move failed: ${messageOf(err)}`).catch((e: unknown) => target.log.error({ vm: vmName, err: messageOf(e) }, "Cannot abort an incoming VM"));
    throw err;
  }
  try {
    await source.vms.releaseOutgoing(id, target.hostName, ctx, { how: "cold" });
  } catch (err) {
    await target.vms.discardArrived(id, ctx, `the source could not release the VM: ${messageOf(err)}`);
    throw new VigilError("VIGIL_HOST", `Cannot move VM ${q(vmName)}: the source could not let go of it (${messageOf(err)}); the target's copy was removed, the VM stays on ${source.hostName}`, { cause: err });
  }
  return { vm: vmName, id, from: source.hostName, to: target.hostName, disks, ms: Math.round(performance.now() - t0) };
}
