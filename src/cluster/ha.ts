/**
 * HA on the manager (docs/cluster.md "Fencing, wired", "Shared storage and HA restarts"): after every heartbeat it
 * plans the restarts of the HA VMs of fenced hosts (planHaRestarts over the hosts' last status, the leases and the
 * placements). A VM whose disks are on the lost host's own storage cannot be started elsewhere: that is recorded
 * (once per (VM, lost epoch) and manager process: an event and a manager audit record). A VM on shared storage is
 * restarted: the manager first takes the durable claim (HaClaims, unique per (VM, lost epoch)); only the claimer
 * asks the target agent to start it, then moves the placement and records `vm.ha-restarted`. A claim seen by a
 * second tick or manager is never acted on again.
 */
import { messageOf } from "../errors.ts";
import type { ClusterHost, ClusterRepository } from "./cluster-repository.ts";
import { planHaRestarts, type HaPlan, type HaVm, type Lease } from "./leases.ts";
import type { HostLoad } from "./types.ts";
import type { HaClaims } from "./ha-claims.ts";

/** Why no HA restart is performed (yet). */
export const HA_NEEDS_SHARED_STORAGE = "the VM's disks are on the lost host; HA restart needs shared storage";

export interface HaMonitorOptions {
  repo: ClusterRepository;
  leases: () => Promise<Lease[]>;
  isReady: (host: string) => boolean;
  event: (kind: string, subject: string, payload: Record<string, unknown>) => Promise<void>;
  record: (vm: string, details: Record<string, unknown>, result?: "ok" | "error") => Promise<void>;
  log: { warn(o: object, m: string): void };
  now?: () => number;
  /** The durable claims (absent: nothing is ever restarted, everything is recorded as refused). */
  claims?: HaClaims | undefined;
  /** Asks agent `to` to restart the VM (POST /v1/agent/ha/restart). */
  restart?: ((to: string, body: { vmId: string; from: string; lostEpoch: number }) => Promise<unknown>) | undefined;
  /** Who claims (the manager's name, in the claim row). */
  claimer?: string;
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
      const hostList = await this.o.repo.listHosts();
      const placements = await this.o.repo.listPlacements();
      const { hosts, vms } = haInputs(hostList, this.o.isReady, placements);
      const claimed = this.o.claims ? await this.o.claims.list() : [];
      const plan = planHaRestarts({ hosts, leases: await this.o.leases(), vms, restarts: claimed.map((c) => ({ vm: c.vmName, epoch: c.lostEpoch })), now });
      this.#last = { ...plan, at: new Date(now).toISOString(), refused: HA_NEEDS_SHARED_STORAGE };
      const storageOf = (host: string, vm: string) => hostList.find((h) => h.name === host)?.status?.vms.find((v) => v.name === vm)?.storage ?? "local";
      for (const r of plan.restarts) {
        const key = `${r.vm}\u0000${r.lostEpoch}`;
        if (this.#reported.has(key)) continue;
        const placement = placements.find((p) => p.vmName === r.vm);
        if (this.o.claims && this.o.restart && placement && storageOf(r.from, r.vm) === "shared") {
          await this.#restart(r, placement);
          continue;
        }
        this.#reported.add(key);
        const payload = { from: r.from, lostEpoch: r.lostEpoch, wouldRestartOn: r.to, reasons: r.reasons, refused: HA_NEEDS_SHARED_STORAGE, storage: storageOf(r.from, r.vm) };
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

  /** Claim, then restart; a claim already taken (another tick or manager) ends it here. */
  async #restart(r: HaPlan["restarts"][number], p: { vmId: string; vmName: string; owner: string }): Promise<void> {
    const claims = this.o.claims!;
    const { claimed, claim } = await claims.claim({ vmId: p.vmId, vmName: p.vmName, lostEpoch: r.lostEpoch, from: r.from, to: r.to, by: this.o.claimer ?? "manager" });
    if (!claimed) return; // someone else holds it: never twice
    const base = { from: r.from, to: r.to, lostEpoch: r.lostEpoch, reasons: r.reasons, claimedAt: claim.claimedAt };
    await this.o.record(r.vm, { step: "claimed", ...base }, "ok");
    try {
      await this.o.restart!(r.to, { vmId: p.vmId, from: r.from, lostEpoch: r.lostEpoch });
    } catch (err) {
      await claims.finish(p.vmId, r.lostEpoch, { ok: false, error: messageOf(err) });
      await this.o.record(r.vm, { step: "failed", ...base, error: messageOf(err) }, "error");
      await this.o.event("vm.ha-restart-failed", r.vm, { ...base, error: messageOf(err) });
      return;
    }
    await this.o.repo.setPlacement({ vmId: p.vmId, vmName: p.vmName, host: r.to, owner: p.owner });
    await claims.finish(p.vmId, r.lostEpoch, { ok: true });
    await this.o.record(r.vm, { step: "restarted", ...base }, "ok");
    await this.o.event("vm.ha-restarted", r.vm, base);
  }
}
