/**
 * Rollback policy: what a revert may not undo. Each VM carries a security floor — facts that must never go
 * backwards (patch level, signature-database version, credential epoch, firewall policy version, or any other
 * named fact). A snapshot remembers the floor of its moment; reverting to a snapshot below the VM's current
 * floor is refused unless forced with a reason, and a forced revert runs the site's re-apply hook afterwards
 * ("carry out certain tasks outside the VM"). Single-use memory snapshots are resumed at most once: resuming one
 * saved state twice replays its RNG state, keys and nonces (Firecracker's rule).
 */
import { VigilError, q } from "../errors.ts";
import type { Snapshot } from "../storage/snapshot-repository.ts";
import type { VmRecord } from "../vm/vm-repository.ts";
import { compareVersions } from "./debian-version.ts";

/** Well-known floor facts; any other lower-case name is allowed too. */
export const FLOOR_FACTS = ["patchLevel", "signatures", "credentialEpoch", "firewallPolicy"] as const;
export const floorKeyPattern = /^[a-z][A-Za-z0-9_.-]{0,63}$/;
export const floorValuePattern = /^[A-Za-z0-9.+~:_-]{1,128}$/;

export interface FloorViolation {
  fact: string;
  floor: string;
  snapshot: string | null;
}

/** The facts of `floor` that `state` is below (a missing fact counts as below). */
export function floorViolations(floor: Record<string, string>, state: Record<string, string>): FloorViolation[] {
  const out: FloorViolation[] = [];
  for (const [fact, required] of Object.entries(floor)) {
    const have = state[fact];
    if (have === undefined || compareVersions(have, required) < 0) out.push({ fact, floor: required, snapshot: have ?? null });
  }
  return out;
}

/** Throws unless the revert is allowed; says whether it was forced past the floor. */
export async function checkRevert(vm: VmRecord, snapshot: Snapshot, options: { force: boolean; reason: string | undefined }): Promise<{ forced: boolean }> {
  if (snapshot.kind === "memory" && snapshot.singleUse && snapshot.resumedCount > 0) {
    throw new VigilError(
      "VIGIL_POLICY_DENIED",
      `Cannot revert VM ${q(vm.name)} to snapshot ${q(snapshot.name)}: it is single-use and was resumed already (resuming one saved state twice repeats its keys and random numbers)`,
      { field: "snapshot" },
    );
  }
  const violations = floorViolations(vm.securityFloor, snapshot.floor);
  if (violations.length === 0) return { forced: false };
  const list = violations.map((v) => `${v.fact} ${v.snapshot ?? "(unset)"} < ${v.floor}`).join(", ");
  if (!options.force) {
    throw new VigilError("VIGIL_POLICY_DENIED", `Cannot revert VM ${q(vm.name)} to snapshot ${q(snapshot.name)}: it is below the security floor (${list}); use --force with --reason to override`, { field: "snapshot" });
  }
  if (!options.reason || options.reason.trim().length < 3) {
    throw new VigilError("VIGIL_BAD_REQUEST", `A forced revert below the security floor needs a reason (${list})`, { field: "reason" });
  }
  return { forced: true };
}
