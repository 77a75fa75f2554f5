/**
 * The site's ownership policy for VMs, as plain functions of the policy and the fields: who may own a new VM,
 * which ownership fields every new VM needs (`requireOwnership`), and that an expired VM stays stopped
 * (`expiredVms: "stop"`). Kept apart from the operations so create, clone, import, start, restart and revert
 * all apply the same rule with the same message.
 */
import { VigilError, q } from "../errors.ts";
import type { RequestContext } from "../auth/guard.ts";
import type { UserStore } from "../auth/users.ts";
import { expiryInstant, isExpired } from "./expiry.ts";
import type { VmRecord } from "./vm-repository.ts";
import type { VmPolicy } from "./vm-types.ts";

/** The fields of a new VM the ownership policy looks at. */
export interface OwnershipFields {
  approver?: string | null | undefined;
  purpose?: string | null | undefined;
  expiresAt?: string | null | undefined;
}

/**
 * The ownership fields of every new VM — created, cloned or imported: an expiry, if any, lies in the future
 * (a VM born expired is a mistake, and under `expiredVms: "stop"` one that could never run); under the site
 * policy `requireOwnership` it also has an approver, a purpose and an expiry. The error names every missing
 * field, so one retry can fix them all.
 */
export function checkOwnershipPolicy(policy: VmPolicy, context: string, fields: OwnershipFields, code: "VIGIL_INVALID_SPEC" | "VIGIL_BAD_REQUEST" = "VIGIL_BAD_REQUEST"): void {
  const expiresAt = fields.expiresAt;
  if (expiresAt !== undefined && expiresAt !== null && expiresAt !== "" && isExpired(expiresAt)) {
    throw new VigilError(code, `${context}: "expiresAt" must be in the future, got ${q(expiresAt)} (${new Date(expiryInstant(expiresAt)).toISOString()}); give a later --expires`, { field: "expiresAt" });
  }
  if (!policy.requireOwnership) return;
  const missing = (["approver", "purpose", "expiresAt"] as const).filter((f) => fields[f] === undefined || fields[f] === null || fields[f] === "");
  const [first] = missing;
  if (first === undefined) return;
  const names = missing.map((f) => q(f));
  const list = names.length === 1 ? names[0]! : `${names.slice(0, -1).join(", ")} and ${names[names.length - 1]!}`;
  throw new VigilError("VIGIL_POLICY_DENIED", `${context}: ${list} ${missing.length === 1 ? "is" : "are"} required by this site's policy (owner, approver, purpose and expiry on every VM)`, { field: first });
}

/**
 * Under the site policy `expiredVms: "stop"`, an expired VM may not run: `start`, `restart` and a revert that
 * would start QEMU are refused before anything changes. No operation changes an expiry, so the way out is a new
 * VM with a later one.
 */
export function checkNotExpired(policy: VmPolicy, vm: VmRecord, context: string): void {
  if (policy.expiredVms !== "stop" || !isExpired(vm.expiresAt)) return;
  throw new VigilError(
    "VIGIL_POLICY_DENIED",
    `${context}: it expired at ${q(vm.expiresAt)} ("expiresAt") and this site's policy stops expired VMs; its expiry cannot be changed, so recreate it or clone it with a later --expires`,
    { field: "expiresAt" },
  );
}

/**
 * Who will own a new VM: the creator, a group the creator is in, or (with vm.chown everywhere, checked by the
 * caller before) anyone — as long as that user or group exists.
 */
export async function resolveOwner(users: UserStore, ctx: RequestContext, requested: string | undefined): Promise<string> {
  if (requested === undefined) return `user:${ctx.actor.name}`;
  const m = /^(user|group):([a-z_][a-z0-9_.-]{0,63})$/.exec(requested);
  if (!m) throw new VigilError("VIGIL_INVALID_SPEC", `Invalid VM spec: "owner" must be user:NAME or group:NAME, got ${q(requested)}`, { field: "owner" });
  const [, kind, who] = m;
  if (kind === "user" ? !(await users.findByName(who!)) : !(await users.groupExists(who!))) {
    throw new VigilError("VIGIL_INVALID_SPEC", `Invalid VM spec: owner ${q(requested)} does not exist`, { field: "owner" });
  }
  return requested;
}
