/**
 * The generation tree of a VM. Every event that forks guest state — a revert, a restore of saved memory, a
 * clone, an import — starts a new run with a new vmgenid GUID and generation+1, and is recorded here with its
 * parent generation. The guest learns of the fork through the vmgenid device and reseeds its RNG; whether it
 * did is checked afterwards and written back (`reseed`).
 */
import type { Db } from "../inventory/db.ts";

export type ForkReason = "create" | "revert" | "restore" | "clone" | "import";
export type ReseedStatus = "seen" | "not-seen" | "unsupported";

export interface Generation {
  generation: number;
  parentGeneration: number | null;
  vmgenid: string;
  reason: ForkReason;
  snapshot: string | null;
  sourceVmId: string | null;
  reseed: ReseedStatus | null;
  createdBy: string;
  createdAt: string;
}

export class GenerationLog {
  constructor(private readonly db: Db) {}

  async record(vmId: string, g: Omit<Generation, "createdAt" | "reseed">): Promise<void> {
    await this.db
      .insertInto("generations")
      .values({
        vm_id: vmId,
        generation: g.generation,
        parent_generation: g.parentGeneration,
        vmgenid: g.vmgenid,
        reason: g.reason,
        snapshot: g.snapshot,
        source_vm_id: g.sourceVmId,
        reseed: null,
        created_by: g.createdBy,
        created_at: new Date().toISOString(),
      })
      .execute();
  }

  async setReseed(vmId: string, generation: number, status: ReseedStatus): Promise<void> {
    await this.db.updateTable("generations").set({ reseed: status }).where("vm_id", "=", vmId).where("generation", "=", generation).execute();
  }

  async list(vmId: string): Promise<Generation[]> {
    const rows = await this.db.selectFrom("generations").selectAll().where("vm_id", "=", vmId).orderBy("id").execute();
    return rows.map((r) => ({
      generation: r.generation,
      parentGeneration: r.parent_generation,
      vmgenid: r.vmgenid,
      reason: r.reason as ForkReason,
      snapshot: r.snapshot,
      sourceVmId: r.source_vm_id,
      reseed: r.reseed as ReseedStatus | null,
      createdBy: r.created_by,
      createdAt: r.created_at,
    }));
  }
}
