/**
 * HA on the manager (docs/cluster.md "Fencing, wired"): after every heartbeat it plans the restarts of the HA VMs of
 * fenced hosts (planHaRestarts over the hosts' last status, the leases and the placements) and records what it
 * WOULD restart, where and why, but refuses to act: vigil has no shared storage yet, so a VM's disks are on the
 * host that was lost and no other host can start it. Each (VM, lost epoch) is reported once per manager process
 * (an event and a manager audit record); a manager that restarts reports it once more.
 */
import { messageOf } from "../errors.ts";
import type { ClusterHost, ClusterRepository } from "./cluster-repository.ts";
import { planHaRestarts, type HaPlan, type HaVm, type Lease } from "./leases.ts";
import type { HostLoad } from "./types.ts";

/** Why no HA restart is performed (yet). */
export const HA_NEEDS_SHARED_STORAGE = "the VM's disks are on the lost host; HA restart needs shared storage";

export interface HaMonitorOptions {
  repo: ClusterRepository;
  leases: () => Promise<Lease[]>;
  isReady: (host: string) => boolean;
  event: (kind: string, subject: string, payload: Record<string, unknown>) => Promise<void>;
  record: (vm: string, details: Record<string, unknown>) => Promise<void>;
  log: { warn(o: object, m: string): void };
  now?: () => number;
}

/** The inputs of planHaRestarts from what the manager knows: hosts with their last status, HA placements. */
export function haInputs(hosts: ClusterHost[], isReady: (host: string) => boolean, placements: { vmName: string; host: string; ha: boolean }[]): { hosts: HostLoad[]; vms: HaVm[] } {
  const loads: HostLoad[] = hosts
    .filter((h) => h.status !== null && h.status.memTotalMiB > 1)
    .map((h) => ({
      name: h.name,
      memTotalMiB: h.status!.memTotalMiB,
      memReservedMiB: Math.min(1024, Math.floor(h.status!.memTotalMiB / 8)),
      cpus: Math.max(1, h.status!.cpus),
      ready: isReady(h.name),
      vms: h.status!.vms.filter((v) => v.state !== "stopped").map((v) => ({ name: v.name, memoryMiB: v.memoryMiB, vcpus: v.vcpus })),
    }));
  const sizes = new Map(hosts.flatMap((h) => (h.status?.vms ?? []).map((v) => [`${h.name}\u0000${v.name}`, v] as const)));
  const vms: HaVm[] = [];
  for (const p of placements) {
    if (!p.ha) continue;
    // The size the VM had in its host's last status; a VM never reported has none to place by.
    const s = sizes.get(`${p.host}\u0000${p.vmName}`);
    if (s) vms.push({ name: p.vmName, host: p.host, ha: true, memoryMiB: s.memoryMiB, vcpus: s.vcpus });
  }
  return { hosts: loads, vms };
}

export class HaMonitor {
  #last: (HaPlan & { at: string; refused: string }) | undefined;
  #reported = new Set<string>();
  #running = false;

  constructor(private readonly o: HaMonitorOptions) {}

  /** The last plan (what would be restarted, and why nothing is). */
  get last(): (HaPlan & { at: string; refused: string }) | undefined {
    return this.#last;
  }

  /** One planning pass; overlapping passes are skipped. Never throws (logged). */
  async tick(): Promise<void> {
    if (this.#running) return;
    this.#running = true;
    try {
      const now = (this.o.now ?? Date.now)();
      const { hosts, vms } = haInputs(await this.o.repo.listHosts(), this.o.isReady, await this.o.repo.listPlacements());
      const plan = planHaRestarts({ hosts, leases: await this.o.leases(), vms, restarts: [], now });
      this.#last = { ...plan, at: new Date(now).toISOString(), refused: HA_NEEDS_SHARED_STORAGE };
      for (const r of plan.restarts) {
        const key = `${r.vm}\u0000${r.lostEpoch}`;
        if (this.#reported.has(key)) continue;
        this.#reported.add(key);
        const payload = { from: r.from, lostEpoch: r.lostEpoch, wouldRestartOn: r.to, reasons: r.reasons, refused: HA_NEEDS_SHARED_STORAGE };
        await this.o.event("vm.ha-restart-refused", r.vm, payload);
        await this.o.record(r.vm, payload);
      }
      for (const u of plan.unplaced) {
        const key = `${u.vm}\u0000${u.lostEpoch}`;
        if (this.#reported.has(key)) continue;
        this.#reported.add(key);
        await this.o.event("vm.ha-unplaced", u.vm, { from: u.from, lostEpoch: u.lostEpoch, reasons: u.reasons });
      }
    } catch (err) {
      this.o.log.warn({ err: messageOf(err) }, "HA planning failed");
    } finally {
      this.#running = false;
    }
  }
}
