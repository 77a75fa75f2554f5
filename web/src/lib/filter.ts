/** The inventory's filters: a free-text search over the fields a user sees, the state, the host and badges. */
import type { VmSummary } from "./types.ts";

/** The fields filtering and sorting look at: a summary and a full VM both have them. */
export type Listed = Pick<VmSummary, "name" | "owner" | "host" | "purpose" | "state" | "labels" | "expired" | "expiresAt" | "posture">;

export interface VmFilter {
  text: string;
  state: string;
  host: string;
  /** "expired" | "alarm" | "" */
  badge: string;
}

export function matchesFilter(vm: Listed, f: VmFilter): boolean {
  if (f.state && vm.state !== f.state) return false;
  if (f.host && vm.host !== f.host) return false;
  if (f.badge === "expired" && !vm.expired) return false;
  if (f.badge === "alarm" && !hasAlarm(vm)) return false;
  const t = f.text.trim().toLowerCase();
  if (!t) return true;
  const hay = [vm.name, vm.owner, vm.host, vm.purpose ?? "", vm.state, ...Object.entries(vm.labels).map(([k, v]) => `${k}=${v}`)].join(" ").toLowerCase();
  return t.split(/\s+/).every((w) => hay.includes(w));
}

/** An alarm badge: the posture says vulnerable or infected. */
export function hasAlarm(vm: Pick<VmSummary, "posture">): boolean {
  return vm.posture === "vulnerable" || vm.posture === "infected";
}

export function sortVms<T extends Listed>(vms: T[], key: "name" | "state" | "owner" | "host" | "expiresAt"): T[] {
  return [...vms].sort((a, b) => String(a[key] ?? "").localeCompare(String(b[key] ?? "")) || a.name.localeCompare(b.name));
}
