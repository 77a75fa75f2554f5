/**
 * `vigil watch` options → the PUT /v1/vms/NAME/watch body. Options not given keep the current watch's values
 * (changing the interval must not reset a snapshot-and-pause policy); only a VM that is not watched yet gets
 * the defaults. Limits are checked here so the error names the CLI's own flag, not the API's field.
 */
import { ApiError } from "./client.ts";

export const WATCH_POLICIES = ["alert", "pause", "snapshot-and-pause"] as const;
export const MIN_INTERVAL_MS = 250;
export const MAX_INTERVAL_MS = 3_600_000;
export const MAX_GUEST_VIEW_EVERY = 3600;
export const WATCH_DEFAULTS = { intervalMs: 1000, policy: "alert", guestViewEvery: 1, noNewModules: false } as const;

const bad = (flag: string, message: string) => new ApiError("VIGIL_BAD_REQUEST", message, 0, flag);

/** "1s", "500ms", "2m", "1h" or plain seconds → milliseconds, within the watch's limits (250ms..1h). */
export function parseInterval(v: string): number {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h)?$/.exec(v.trim());
  if (!m) throw bad("--interval", `Invalid --interval ${JSON.stringify(v)}: use e.g. 1s, 500ms, 2m`);
  const ms = Math.round(Number(m[1]) * ({ ms: 1, s: 1000, m: 60_000, h: 3_600_000 } as const)[(m[2] ?? "s") as "ms" | "s" | "m" | "h"]);
  if (ms < MIN_INTERVAL_MS) throw bad("--interval", `Invalid --interval ${JSON.stringify(v)}: must be at least 250ms`);
  if (ms > MAX_INTERVAL_MS) throw bad("--interval", `Invalid --interval ${JSON.stringify(v)}: must be at most 1h`);
  return ms;
}

/** --guest-view-every: a whole number 1..3600. */
export function parseGuestViewEvery(v: string): number {
  if (!/^\d+$/.test(v) || Number(v) < 1 || Number(v) > MAX_GUEST_VIEW_EVERY) {
    throw bad("--guest-view-every", `Invalid --guest-view-every ${JSON.stringify(v)}: must be a whole number from 1 to ${MAX_GUEST_VIEW_EVERY}`);
  }
  return Number(v);
}

/** --policy: one of alert, pause, snapshot-and-pause. */
export function parsePolicy(v: string): string {
  if (!(WATCH_POLICIES as readonly string[]).includes(v)) throw bad("--policy", `Invalid --policy ${JSON.stringify(v)}: use ${WATCH_POLICIES.join(", ")}`);
  return v;
}

export interface WatchSettings {
  intervalMs: number;
  policy: string;
  guestViewEvery: number;
  /** --no-new-modules / --new-modules */
  noNewModules: boolean;
}

/**
 * The body to PUT, or undefined when nothing needs to change (the VM is watched and no option was given).
 * `given` holds parsed options; `existing` is the current watch (null when the VM is not watched).
 */
export function watchBody(given: Partial<WatchSettings>, existing: Partial<WatchSettings> | null): WatchSettings | undefined {
  const none = given.intervalMs === undefined && given.policy === undefined && given.guestViewEvery === undefined && given.noNewModules === undefined;
  if (existing && none) return undefined;
  const base = { ...WATCH_DEFAULTS, ...(existing ? pick(existing) : {}) };
  return { ...base, ...pick(given) };
}

function pick(s: Partial<WatchSettings>): Partial<WatchSettings> {
  const out: Partial<WatchSettings> = {};
  if (s.intervalMs !== undefined) out.intervalMs = s.intervalMs;
  if (s.policy !== undefined) out.policy = s.policy;
  if (s.guestViewEvery !== undefined) out.guestViewEvery = s.guestViewEvery;
  if (s.noNewModules !== undefined) out.noNewModules = s.noNewModules;
  return out;
}
