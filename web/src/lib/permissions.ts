/**
 * Which buttons to show. Mirrors src/auth/permissions.ts's rule (a grant everywhere, or on VMs the user owns
 * directly or through a group) from the lists the session returns. Only for hiding what would be refused: the
 * API still decides every request.
 */
import type { SessionInfo } from "./types.ts";

export function ownsVm(s: Pick<SessionInfo, "user">, owner: string): boolean {
  if (owner === `user:${s.user.name}`) return true;
  return owner.startsWith("group:") && s.user.groups.includes(owner.slice("group:".length));
}

export function may(s: Pick<SessionInfo, "user" | "can" | "ownedCan"> | null, permission: string, vmOwner?: string): boolean {
  if (!s) return false;
  if (s.can.includes(permission)) return true;
  return vmOwner !== undefined && ownsVm(s, vmOwner) && s.ownedCan.includes(permission);
}
