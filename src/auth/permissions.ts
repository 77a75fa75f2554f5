/**
 * Roles and permissions, deny by default. A permission is granted by a role either on every object or only on
 * VMs the actor owns (directly or through a group). Reading guest memory (`vm.introspect`) is never part of a
 * role: it exposes every secret in the guest, so it is a separate grant on the user, and still needs read
 * access to the VM.
 */

export const ROLES = ["admin", "operator", "owner", "auditor"] as const;
export type Role = (typeof ROLES)[number];

export const PERMISSIONS = [
  "vm.read", // list, show, status, history, where, events of a VM
  "vm.create",
  "vm.control", // start, stop, kill, pause, resume, restart
  "vm.console", // interactive serial console and its captured log: as good as a root shell in the guest
  "vm.exec", // run an allow-listed command through the guest agent
  "vm.modify", // snapshots, templates, clones, settings
  "vm.delete", // destroy and purge
  "vm.chown",
  "vm.export",
  "vm.introspect",
  "image.read",
  "image.manage",
  "user.read",
  "user.manage",
  "audit.read",
  "trust.manage",
  "host.read",
  "network.read", // list and show networks, a VM's firewall policy and counters
  "network.manage", // create/delete networks and quarantine services, port forwards, traffic mirrors (they expose traffic)
  "vm.firewall", // change a VM's firewall policy
  "vm.quarantine", // move a VM into or out of the quarantine zone: a security decision, never the owner's alone
  "cluster.manage", // add and remove hosts of a cluster (issues their certificates), balance it: admins only
  "vm.unsafe", // operations that exist to show what goes wrong (a revert keeping the vmgenid): admins only
  "vm.migrate", // move a VM to another host (its dossier, its incoming QEMU there): placement is the operators' call
] as const;
export type Permission = (typeof PERMISSIONS)[number];

const VM_OWNER_PERMISSIONS: Permission[] = ["vm.read", "vm.control", "vm.console", "vm.exec", "vm.modify", "vm.delete", "vm.chown", "vm.export", "vm.firewall"];

/** What each role grants everywhere (`any`) and on VMs the actor owns (`owned`). */
const GRANTS: Record<Role, { any: Permission[]; owned: Permission[] }> = {
  admin: { any: PERMISSIONS.filter((p) => p !== "vm.introspect"), owned: [] },
  operator: { any: ["vm.read", "vm.create", "vm.control", "vm.console", "vm.exec", "vm.modify", "vm.export", "image.read", "host.read", "network.read", "vm.migrate"], owned: VM_OWNER_PERMISSIONS },
  owner: { any: ["vm.create", "image.read", "network.read"], owned: VM_OWNER_PERMISSIONS },
  auditor: { any: ["vm.read", "image.read", "user.read", "audit.read", "host.read", "network.read"], owned: [] },
};

export interface Actor {
  userId: string;
  name: string;
  roles: Role[];
  introspect: boolean;
  groups: string[];
  /** How the request arrived: the local unix socket, a bearer token, or the cluster manager acting for a user. */
  via: "unix" | "token" | "system" | "cluster";
  /** The bearer token the request came with: tokens minted with it may not outlive it. */
  token?: { id: string; expiresAt: string | null } | undefined;
}

/** The actor vigil itself uses for what it observes (crashes, findings, policy actions). */
export const SYSTEM_ACTOR: Actor = { userId: "system", name: "system", roles: ["admin"], introspect: true, groups: [], via: "system" };

/** "user:alice" / "group:dev". */
export type OwnerRef = string;

export function ownsVm(actor: Actor, owner: OwnerRef): boolean {
  if (owner === `user:${actor.name}`) return true;
  return owner.startsWith("group:") && actor.groups.includes(owner.slice("group:".length));
}

/**
 * May `actor` do `permission`, globally or on a VM owned by `vmOwner`? Without `vmOwner` only grants on every
 * object count (that is how "may create a VM" or "may list users" is asked).
 */
export function can(actor: Actor, permission: Permission, vmOwner?: OwnerRef): boolean {
  if (permission === "vm.introspect") {
    return actor.introspect && (vmOwner === undefined || can(actor, "vm.read", vmOwner));
  }
  for (const role of actor.roles) {
    const g = GRANTS[role];
    if (g.any.includes(permission)) return true;
    if (vmOwner !== undefined && g.owned.includes(permission) && ownsVm(actor, vmOwner)) return true;
  }
  return false;
}

/** Whether the actor may see the whole inventory or only VMs it owns. */
export function seesAllVms(actor: Actor): boolean {
  return actor.roles.some((r) => GRANTS[r].any.includes("vm.read"));
}

/** What deciding an audit record's visibility looks at: the object it names. */
export interface RecordTarget {
  target: { id?: string | null | undefined };
}

/**
 * May `actor` read this audit record? With `audit.read`, every record; otherwise only records about a VM it may
 * read, `vmOwner` being the owner of the VM whose id the record's target names (undefined when it names no
 * existing VM: nobody without `audit.read` reads those). The one rule for `GET /v1/audit` and `GET /v1/events`.
 */
export function mayReadRecord(actor: Actor, record: RecordTarget, vmOwner: OwnerRef | undefined): boolean {
  if (can(actor, "audit.read")) return true;
  return record.target.id !== null && record.target.id !== undefined && vmOwner !== undefined && can(actor, "vm.read", vmOwner);
}

/** Whether some audit record may be readable by `actor` (all, or those about VMs it may read). */
export function readsAuditRecords(actor: Actor): boolean {
  return can(actor, "audit.read") || actor.roles.some((r) => GRANTS[r].any.includes("vm.read") || GRANTS[r].owned.includes("vm.read"));
}

/**
 * May `actor` follow the progress of a request sent by `sentBy` (recorded when it arrived)? Its own, or any with
 * the admin role. A request not (yet) known (`sentBy` undefined) is nobody's.
 */
export function mayFollowProgress(actor: Actor, sentBy: string | undefined): boolean {
  if (actor.roles.includes("admin")) return true;
  return sentBy !== undefined && sentBy === actor.name;
}
