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
import { isLive } from "./state-machine.ts";
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

/** How many times one daemon run tries to stop one expired VM before it gives up (and says so in the audit log). */
export const MAX_EXPIRY_STOP_ATTEMPTS = 5;

/**
 * Checks now and every `intervalMs`. Under the "stop" policy a live expired VM is stopped; a VM still
 * `starting`, or whose stop failed, is tried again on the next check, at most `MAX_EXPIRY_STOP_ATTEMPTS` times
 * per daemon run. Every attempt is audited (`vm.stop` by the system actor, request id `expiry-<id>-<n>`) and a
 * failure logged; after the last failure one `vm.expiry-stop` record with result `error` says vigil gave up.
 * Checks never overlap: a stop may take longer than the interval.
 */
export function startExpiryWatch(d: { repo: VmRepository; vms: VmService; audit: AuditLog; log: Logger; action: "flag" | "stop" }, intervalMs = 60_000): () => void {
  const reported = new Set<string>();
  const stopAttempts = new Map<string, number>();
  let checking = false;
  const check = async () => {
    for (const vm of await d.repo.list()) {
      if (!isExpired(vm.expiresAt)) continue;
      if (!reported.has(vm.id)) {
        reported.add(vm.id);
        await d.audit.append({ actor: SYSTEM_ACTOR.name, action: "vm.expired", target: { kind: "vm", id: vm.id, name: vm.name }, result: "ok", details: { expiresAt: vm.expiresAt, policy: d.action } });
      }
      if (d.action !== "stop" || !isLive(vm.state)) continue;
      const attempt = (stopAttempts.get(vm.id) ?? 0) + 1;
      if (attempt > MAX_EXPIRY_STOP_ATTEMPTS) continue;
      stopAttempts.set(vm.id, attempt);
      try {
        await d.vms.stop({ actor: SYSTEM_ACTOR, requestId: `expiry-${vm.id}-${attempt}` }, vm.name);
        stopAttempts.delete(vm.id); // stopped: a later start (refused by policy) would begin a fresh count
      } catch (err) {
        d.log.warn({ vm: vm.name, attempt, of: MAX_EXPIRY_STOP_ATTEMPTS, err: messageOf(err) }, "Cannot stop an expired VM");
        if (attempt === MAX_EXPIRY_STOP_ATTEMPTS) {
          await d.audit.append({ actor: SYSTEM_ACTOR.name, action: "vm.expiry-stop", target: { kind: "vm", id: vm.id, name: vm.name }, result: "error", details: { attempts: attempt, error: messageOf(err), expiresAt: vm.expiresAt } });
          d.log.error({ vm: vm.name, attempts: attempt }, "Gave up stopping an expired VM for this daemon run");
        }
      }
    }
  };
  const run = () => {
    if (checking) return;
    checking = true;
    void check()
      .catch((err: unknown) => d.log.error({ err: messageOf(err) }, "expiry check failed"))
      .finally(() => (checking = false));
  };
  run();
  const timer = setInterval(run, intervalMs);
  timer.unref();
  return () => clearInterval(timer);
}
