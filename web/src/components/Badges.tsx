/** State, expiry and alarm badges: text as well as colour, so they read without colour too. */
import type { VmSummary } from "../lib/types.ts";
import { relative } from "../lib/format.ts";
import { hasAlarm } from "../lib/filter.ts";

export function StateBadge({ state }: { state: string }) {
  return <span className={`badge state-${state}`}>{state}</span>;
}

export function VmBadges({ vm }: { vm: Pick<VmSummary, "template" | "expired" | "expiresAt" | "posture"> }) {
  return (
    <>
      {vm.template && <span className="badge">template</span>}
      {vm.expired ? <span className="badge warn" title={`expired ${vm.expiresAt ?? ""}`}>expired</span> : vm.expiresAt ? <span className="badge" title={vm.expiresAt}>expires {relative(vm.expiresAt)}</span> : null}
      {hasAlarm(vm) && <span className="badge alarm">{vm.posture}</span>}
    </>
  );
}
