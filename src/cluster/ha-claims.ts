/**
 * The manager's durable claims on HA restarts (docs/cluster.md "Shared storage and HA restarts"). A restart of VM
 * `vm_id` because its host lost the lease at `lost_epoch` happens only after its claim row was inserted; the row's
 * primary key is (vm_id, lost_epoch), so of two managers (or two ticks) exactly one insert succeeds and the other
 * sees the claim and does nothing. A claim is never deleted: a failed restart stays failed for that epoch (an
 * operator starts the VM by hand), which is what "never twice" costs.
 */
import type { Db } from "../inventory/db.ts";
import { VigilError, q } from "../errors.ts";

export type HaClaimState = "claimed" | "restarted" | "failed";

export interface HaClaim {
  vmId: string;
  vmName: string;
  lostEpoch: number;
  from: string;
  to: string;
  state: HaClaimState;
  error: string | null;
  claimedBy: string;
  claimedAt: string;
  finishedAt: string | null;
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

function need(value: unknown, field: string, what: string): string {
  if (typeof value !== "string" || value === "" || value.length > 253) {
    throw new VigilError("VIGIL_BAD_REQUEST", `${what} must be a non-empty string of at most 253 characters, not ${q(value)}`, { field });
  }
  return value;
}

export class HaClaims {
  constructor(
    private readonly db: Db,
    private readonly now: () => number = Date.now,
  ) {}

  /**
   * Claims the restart of `vmId` for `lostEpoch`. `{ claimed: true }` when this call inserted the claim (the
   * caller, and only it, restarts the VM); `{ claimed: false, claim }` when a claim existed already.
   */
  async claim(c: { vmId: string; vmName: string; lostEpoch: number; from: string; to: string; by: string }): Promise<{ claimed: boolean; claim: HaClaim }> {
    if (typeof c.vmId !== "string" || !UUID.test(c.vmId)) throw new VigilError("VIGIL_BAD_REQUEST", `The VM id must be a lower-case uuid, not ${q(c.vmId)}`, { field: "vmId" });
    if (!Number.isSafeInteger(c.lostEpoch) || c.lostEpoch < 1) throw new VigilError("VIGIL_BAD_REQUEST", `The lost epoch must be a whole number from 1, not ${q(c.lostEpoch)}`, { field: "lostEpoch" });
    need(c.vmName, "vmName", "The VM name");
    need(c.from, "from", "The lost host");
    need(c.to, "to", "The target host");
    need(c.by, "by", "The claimer");
    if (c.from === c.to) throw new VigilError("VIGIL_BAD_REQUEST", `The target host must differ from the lost host ${q(c.from)}`, { field: "to" });
    const row = {
      vm_id: c.vmId, vm_name: c.vmName, lost_epoch: c.lostEpoch, from_host: c.from, to_host: c.to,
      state: "claimed", error: null, claimed_by: c.by, claimed_at: new Date(this.now()).toISOString(), finished_at: null,
    };
    try {
      await this.db.insertInto("cluster_ha_restarts").values(row).execute();
      return { claimed: true, claim: toClaim(row) };
    } catch (err) {
      const have = await this.get(c.vmId, c.lostEpoch);
      if (have) return { claimed: false, claim: have };
      throw err;
    }
  }

  /** Records how the claimed restart ended; only a claim still "claimed" moves (once). */
  async finish(vmId: string, lostEpoch: number, outcome: { ok: true } | { ok: false; error: string }): Promise<void> {
    const res = await this.db
      .updateTable("cluster_ha_restarts")
      .set({ state: outcome.ok ? "restarted" : "failed", error: outcome.ok ? null : outcome.error.slice(0, 2000), finished_at: new Date(this.now()).toISOString() })
      .where("vm_id", "=", vmId)
      .where("lost_epoch", "=", lostEpoch)
      .where("state", "=", "claimed")
      .executeTakeFirst();
    if (res.numUpdatedRows !== 1n) throw new VigilError("VIGIL_CONFLICT", `No open HA restart claim for VM ${q(vmId)} at epoch ${lostEpoch}`);
  }

  async get(vmId: string, lostEpoch: number): Promise<HaClaim | undefined> {
    const r = await this.db.selectFrom("cluster_ha_restarts").selectAll().where("vm_id", "=", vmId).where("lost_epoch", "=", lostEpoch).executeTakeFirst();
    return r && toClaim(r);
  }

  /** Every claim, oldest first. */
  async list(): Promise<HaClaim[]> {
    return (await this.db.selectFrom("cluster_ha_restarts").selectAll().orderBy("claimed_at").orderBy("vm_id").execute()).map(toClaim);
  }
}

function toClaim(r: {
  vm_id: string; vm_name: string; lost_epoch: number; from_host: string; to_host: string; state: string; error: string | null;
  claimed_by: string; claimed_at: string; finished_at: string | null;
}): HaClaim {
  return {
    vmId: r.vm_id, vmName: r.vm_name, lostEpoch: Number(r.lost_epoch), from: r.from_host, to: r.to_host, state: r.state as HaClaimState,
    error: r.error, claimedBy: r.claimed_by, claimedAt: r.claimed_at, finishedAt: r.finished_at,
  };
}
