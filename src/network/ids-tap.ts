/**
 * The mirror "to an IDS tap" (issue 11 item 5): for a time window, every frame the NIC's tap sends and receives
 * is copied (tc `mirred egress mirror`) to a named interface inside vigil's netns, where an IDS listens. Kernel
 * facts measured here: `clsact` + the `u32` classifier + `mirred` are built in (matchall, basic and flower are
 * not), so the filter is `u32 match u32 0 0` (every frame). The copy target may not be a vigil tap or bridge
 * (that would hand one VM's traffic to another VM). The filters carry vigil's own priority, so removing them
 * touches nothing else; a clsact qdisc vigil added is removed again.
 */
import { VigilError, q } from "../errors.ts";
import { checkLimits } from "./mirror.ts";
import { inNetns } from "./netns-exec.ts";
import type { HostNetns } from "./types.ts";

/** tc filter priority of vigil's mirror filters (one per direction). */
export const IDS_PREF = 49_001;

export interface IdsTapResult {
  tap: string;
  target: string;
  durationMs: number;
}

async function hasClsact(ns: HostNetns, dev: string): Promise<boolean> {
  const r = await inNetns(ns, "tc", ["-j", "qdisc", "show", "dev", dev]);
  const list = JSON.parse(r.stdout || "[]") as Array<{ kind?: string }>;
  return Array.isArray(list) && list.some((x) => x.kind === "clsact");
}

/** Checks the copy target: an existing interface in the netns that is not a vigil tap or bridge. */
export async function checkIdsTarget(ns: HostNetns, target: string): Promise<void> {
  if (!/^[A-Za-z0-9_.-]{1,15}$/.test(target)) throw new VigilError("VIGIL_BAD_REQUEST", `Cannot mirror to ${q(target)}: not an interface name`, { field: "toIds" });
  if (/^v[tb]-/.test(target)) throw new VigilError("VIGIL_BAD_REQUEST", `Cannot mirror to ${q(target)}: it is a vigil tap or bridge (a VM would see another VM's traffic)`, { field: "toIds" });
  try {
    await inNetns(ns, "ip", ["link", "show", "dev", target]);
  } catch (err) {
    throw new VigilError("VIGIL_BAD_REQUEST", `Cannot mirror to ${q(target)}: no such interface in vigil's netns`, { field: "toIds", cause: err });
  }
}

/** Removes vigil's mirror filters (and the clsact qdisc if vigil added it). Idempotent. */
export async function removeIdsTap(ns: HostNetns, tap: string, removeQdisc: boolean): Promise<void> {
  for (const dir of ["ingress", "egress"]) await inNetns(ns, "tc", ["filter", "del", "dev", tap, dir, "pref", String(IDS_PREF)]).catch(() => undefined);
  if (removeQdisc) await inNetns(ns, "tc", ["qdisc", "del", "dev", tap, "clsact"]).catch(() => undefined);
}

/**
 * Copies the tap's traffic (both directions) to `target` for `durationMs`, then removes the copy; resolves when
 * the window is over. `signal` ends it early.
 */
export async function mirrorToIds(ns: HostNetns, tap: string, target: string, durationMs: number, signal?: AbortSignal): Promise<IdsTapResult> {
  checkLimits({ durationMs, maxBytes: 1024, maxPackets: 1 });
  if (!/^vt-[0-9a-f]{10}$/.test(tap)) throw new VigilError("VIGIL_BAD_REQUEST", `Cannot mirror: ${q(tap)} is not a vigil tap`, { field: "nic" });
  await checkIdsTarget(ns, target);
  const added = !(await hasClsact(ns, tap));
  try {
    if (added) await inNetns(ns, "tc", ["qdisc", "add", "dev", tap, "clsact"]);
    for (const dir of ["ingress", "egress"]) {
      await inNetns(ns, "tc", ["filter", "add", "dev", tap, dir, "pref", String(IDS_PREF), "protocol", "all", "u32", "match", "u32", "0", "0", "action", "mirred", "egress", "mirror", "dev", target]);
    }
    await new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, durationMs);
      signal?.addEventListener("abort", () => (clearTimeout(timer), resolve()), { once: true });
    });
  } finally {
    await removeIdsTap(ns, tap, added);
  }
  return { tap, target, durationMs };
}
