/**
 * Expired VMs: a VM past its expiry date is flagged in every view, recorded once in the audit log, and — when
 * the site's policy says "stop" — powered off (and then refused `start`, `restart` and any revert that would
 * start it: see `VmService.checkNotExpired`). Checked every minute and at start.
 *
 * An expiry is a date (`2026-11-26`) or an ISO time. A date means the end of that day in UTC (23:59:59.999Z): a
 * VM "expiring today" runs until the day is over. The value is stored as given and interpreted here, so rows
 * written before this rule get the same meaning.
 */
import type { AuditLog } from "../audit/audit-log.ts";
import { SYSTEM_ACTOR } from "../auth/permissions.ts";
import { messageOf } from "../errors.ts";
import type { Logger } from "../log.ts";
import type { VmRepository } from "./vm-repository.ts";
import type { VmService } from "./vm-service.ts";

const DATE_ONLY = /^\d{4}-\d{2}-\d{2}$/;

/** The instant (ms since the epoch) at which a VM with this `expiresAt` expires; a bare date means its end (UTC). */
export function expiryInstant(expiresAt: string): number {
  return DATE_ONLY.test(expiresAt) ? Date.parse(`${expiresAt}T23:59:59.999Z`) : Date.parse(expiresAt);
}

/** Whether a VM with this `expiresAt` has expired at `now` (the expiry instant itself counts as expired). */
export function isExpired(expiresAt: string | null, now = Date.now()): boolean {
  return expiresAt !== null && expiryInstant(expiresAt) <= now;
}

export function startExpiryWatch(d: { repo: VmRepository; vms: VmService; audit: AuditLog; log: Logger; action: "flag" | "stop" }, intervalMs = 60_000): () => void {
  const reported = new Set<string>();
  const check = async () => {
    for (const vm of await d.repo.list()) {
      if (!isExpired(vm.expiresAt) || reported.has(vm.id)) continue;
      reported.add(vm.id);
      await d.audit.append({ actor: SYSTEM_ACTOR.name, action: "vm.expired", target: { kind: "vm", id: vm.id, name: vm.name }, result: "ok", details: { expiresAt: vm.expiresAt, policy: d.action } });
      if (d.action === "stop" && (vm.state === "running" || vm.state === "paused")) {
        await d.vms.stop({ actor: SYSTEM_ACTOR, requestId: `expiry-${vm.id}` }, vm.name).catch((err: unknown) => d.log.warn({ vm: vm.name, err: messageOf(err) }, "Cannot stop an expired VM"));
      }
    }
  };
  const run = () => void check().catch((err: unknown) => d.log.error({ err: messageOf(err) }, "expiry check failed"));
  run();
  const timer = setInterval(run, intervalMs);
  timer.unref();
  return () => clearInterval(timer);
}
