/**
 * Snapshots in the inventory: one row per snapshot, forming a tree per VM through `parentId`. The disk and
 * memory state itself lives inside the VM's qcow2 files (QEMU internal snapshots); the row records what it is,
 * who took it, the spec and security floor of the VM at that moment, and the sha256 of the saved memory.
 */
import { randomUUID } from "node:crypto";
import type { Db } from "../inventory/db.ts";
import type { SnapshotRow } from "../inventory/schema.ts";
import { VigilError, q } from "../errors.ts";
import { vmSpecSchema, type VmSpec } from "../vm/spec.ts";

export interface Snapshot {
  id: string;
  vmId: string;
  name: string;
  parentId: string | null;
  description: string;
  kind: "disk" | "memory";
  spec: VmSpec;
  generation: number;
  vmgenid: string;
  vmStateSize: number;
  stateSha256: string | null;
  diskBytes: number;
  floor: Record<string, string>;
  guestFacts: { reseedCount?: number; quiesced?: boolean };
  singleUse: boolean;
  resumedCount: number;
  createdBy: string;
  createdAt: string;
}

function toSnapshot(r: SnapshotRow): Snapshot {
  return {
    id: r.id,
    vmId: r.vm_id,
    name: r.name,
    parentId: r.parent_id,
    description: r.description,
    kind: r.kind === "memory" ? "memory" : "disk",
    spec: vmSpecSchema.parse(JSON.parse(r.spec)),
    generation: r.generation,
    vmgenid: r.vmgenid,
    vmStateSize: r.vm_state_size,
    stateSha256: r.state_sha256,
    diskBytes: r.disk_bytes,
    floor: JSON.parse(r.floor) as Record<string, string>,
    guestFacts: JSON.parse(r.guest_facts) as Snapshot["guestFacts"],
    singleUse: r.single_use === 1,
    resumedCount: r.resumed_count,
    createdBy: r.created_by,
    createdAt: r.created_at,
  };
}

export class SnapshotRepository {
  constructor(private readonly db: Db) {}

  /** `resumedCount` is 0 for a new snapshot; a copy (an import) keeps the count its source had. */
  async insert(s: Omit<Snapshot, "id" | "resumedCount" | "createdAt"> & { resumedCount?: number | undefined }): Promise<Snapshot> {
    const id = randomUUID();
    await this.db
      .insertInto("snapshots")
      .values({
        id,
        vm_id: s.vmId,
        name: s.name,
        parent_id: s.parentId,
        description: s.description,
        kind: s.kind,
        spec: JSON.stringify(s.spec),
        generation: s.generation,
        vmgenid: s.vmgenid,
        vm_state_size: s.vmStateSize,
        state_sha256: s.stateSha256,
        disk_bytes: s.diskBytes,
        floor: JSON.stringify(s.floor),
        guest_facts: JSON.stringify(s.guestFacts),
        single_use: s.singleUse ? 1 : 0,
        resumed_count: s.resumedCount ?? 0,
        created_by: s.createdBy,
        created_at: new Date().toISOString(),
      })
      .execute();
    return this.getById(id);
  }

  async getById(id: string): Promise<Snapshot> {
    const r = await this.db.selectFrom("snapshots").selectAll().where("id", "=", id).executeTakeFirst();
    if (!r) throw new VigilError("VIGIL_NOT_FOUND", `Snapshot with id ${q(id)} does not exist`);
    return toSnapshot(r);
  }

  async find(vmId: string, name: string): Promise<Snapshot | undefined> {
    const r = await this.db.selectFrom("snapshots").selectAll().where("vm_id", "=", vmId).where("name", "=", name).executeTakeFirst();
    return r ? toSnapshot(r) : undefined;
  }

  async get(vmId: string, vmName: string, name: string): Promise<Snapshot> {
    const s = await this.find(vmId, name);
    if (!s) throw new VigilError("VIGIL_NOT_FOUND", `VM ${q(vmName)} has no snapshot ${q(name)}`, { field: "snapshot" });
    return s;
  }

  async list(vmId: string): Promise<Snapshot[]> {
    const rows = await this.db.selectFrom("snapshots").selectAll().where("vm_id", "=", vmId).orderBy("created_at").execute();
    return rows.map(toSnapshot);
  }

  /** Removes a snapshot row; its children now hang off its parent, so the tree never breaks. */
  async delete(s: Snapshot): Promise<void> {
    await this.db.transaction().execute(async (tx) => {
      await tx.updateTable("snapshots").set({ parent_id: s.parentId }).where("parent_id", "=", s.id).execute();
      await tx.deleteFrom("snapshots").where("id", "=", s.id).execute();
    });
  }

  async markResumed(id: string): Promise<void> {
    const s = await this.getById(id);
    await this.db.updateTable("snapshots").set({ resumed_count: s.resumedCount + 1 }).where("id", "=", id).execute();
  }

  async deleteAllOf(vmId: string): Promise<void> {
    await this.db.deleteFrom("snapshots").where("vm_id", "=", vmId).execute();
  }
}
