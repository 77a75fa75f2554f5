/**
 * Expired VMs: a VM past its expiry date is flagged in every view, recorded once in the audit log, and — when
 * the site's policy says "stop" — powered off. Checked every minute and at start.
 */
import type { AuditLog } from "../audit/audit-log.ts";
import { SYSTEM_ACTOR } from "../auth/permissions.ts";
import { messageOf } from "../errors.ts";
import type { Logger } from "../log.ts";
import type { VmRepository } from "./vm-repository.ts";
import type { VmService } from "./vm-service.ts";

export function startExpiryWatch(d: { repo: VmRepository; vms: VmService; audit: AuditLog; log: Logger; action: "flag" | "stop" }, intervalMs = 60_000): () => void {
  const reported = new Set<string>();
  const check = async () => {
    for (const vm of await d.repo.list()) {
      if (vm.expiresAt === null || Date.parse(vm.expiresAt) > Date.now() || reported.has(vm.id)) continue;
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
