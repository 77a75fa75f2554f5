/**
 * VMs in the inventory: typed records in, rows out. The spec is stored as JSON and re-validated on the way out,
 * so a hand-edited or corrupted row is an error naming the VM, not a crash somewhere later.
 */
import type { Db } from "../inventory/db.ts";
import type { VmRow, VmRowUpdate } from "../inventory/schema.ts";
import { VigilError, errors, q } from "../errors.ts";
import { vmSpecSchema, type VmSpec } from "./spec.ts";
import { VM_STATES, type VmState } from "./state-machine.ts";
import { VmListCache } from "./vm-list-cache.ts";

export interface Lineage {
  kind: "image" | "clone" | "import";
  image?: string;
  sourceVm?: { id: string; name: string };
  snapshot?: string;
  linked?: boolean;
  bundle?: { file: string; signer: string };
}

export interface VmRecord {
  id: string;
  name: string;
  spec: VmSpec;
  state: VmState;
  host: string;
  accelerator: string | null;
  vmgenid: string;
  generation: number;
  pid: number | null;
  owner: string;
  approver: string | null;
  purpose: string | null;
  expiresAt: string | null;
  labels: Record<string, string>;
  lineage: Lineage;
  isTemplate: boolean;
  createdBy: string;
  createdAt: string;
  updatedAt: string;
  stateChangedAt: string;
  currentSnapshotId: string | null;
  resumeSnapshotId: string | null;
  baseVmId: string | null;
  vtimeNs: string;
  securityFloor: Record<string, string>;
}

function toRecord(row: VmRow): VmRecord {
  const spec = vmSpecSchema.safeParse(JSON.parse(row.spec));
  if (!spec.success) throw new VigilError("VIGIL_HOST", `The stored spec of VM ${q(row.name)} is invalid: ${spec.error.issues[0]?.message}`);
  if (!(VM_STATES as readonly string[]).includes(row.state)) throw new VigilError("VIGIL_HOST", `VM ${q(row.name)} has an unknown state ${q(row.state)}`);
  return {
    id: row.id,
    name: row.name,
    spec: spec.data,
    state: row.state as VmState,
    host: row.host,
    accelerator: row.accelerator,
    vmgenid: row.vmgenid,
    generation: row.generation,
    pid: row.pid,
    owner: row.owner,
    approver: row.approver,
    purpose: row.purpose,
    expiresAt: row.expires_at,
    labels: JSON.parse(row.labels) as Record<string, string>,
    lineage: JSON.parse(row.lineage) as Lineage,
    isTemplate: row.is_template === 1,
    createdBy: row.created_by,
    createdAt: row.created_at,
    updatedAt: row.updated_at,
    stateChangedAt: row.state_changed_at,
    currentSnapshotId: row.current_snapshot_id,
    resumeSnapshotId: row.resume_snapshot_id,
    baseVmId: row.base_vm_id,
    vtimeNs: row.vtime_ns,
    securityFloor: JSON.parse(row.security_floor) as Record<string, string>,
  };
}

export type VmInsert = Omit<VmRecord, "updatedAt" | "stateChangedAt" | "pid" | "accelerator" | "currentSnapshotId" | "resumeSnapshotId" | "baseVmId" | "vtimeNs" | "securityFloor"> &
  Partial<Pick<VmRecord, "resumeSnapshotId" | "baseVmId" | "vtimeNs" | "securityFloor">>;

type Updatable = Pick<VmRecord, "state" | "accelerator" | "pid" | "vmgenid" | "generation" | "owner" | "approver" | "spec" | "isTemplate" | "host" | "currentSnapshotId" | "resumeSnapshotId" | "securityFloor" | "vtimeNs">;

/** Where `listShared` reads from: every row (in name order) or the rows of some ids. */
const vmRows = {
  all: async (db: Db) => (await db.selectFrom("vms").selectAll().orderBy("name").execute()).map(toRecord),
  some: async (db: Db, ids: string[]) => (await db.selectFrom("vms").selectAll().where("id", "in", ids).execute()).map(toRecord),
  id: (vm: VmRecord) => vm.id,
  compare: (a: VmRecord, b: VmRecord) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0),
};

/** One shared list per database connection: its triggers and its record of changes belong to the connection. */
const sharedLists = new WeakMap<Db, VmListCache<VmRecord>>();

export class VmRepository {
  constructor(readonly db: Db) {}

  async insert(vm: VmInsert): Promise<VmRecord> {
    const now = new Date().toISOString();
    await this.db
      .insertInto("vms")
      .values({
        id: vm.id,
        name: vm.name,
        spec: JSON.stringify(vm.spec),
        state: vm.state,
        host: vm.host,
        accelerator: null,
        vmgenid: vm.vmgenid,
        generation: vm.generation,
        pid: null,
        owner: vm.owner,
        approver: vm.approver,
        purpose: vm.purpose,
        expires_at: vm.expiresAt,
        labels: JSON.stringify(vm.labels),
        lineage: JSON.stringify(vm.lineage),
        is_template: vm.isTemplate ? 1 : 0,
        created_by: vm.createdBy,
        created_at: vm.createdAt,
        updated_at: now,
        state_changed_at: now,
        current_snapshot_id: null,
        resume_snapshot_id: vm.resumeSnapshotId ?? null,
        base_vm_id: vm.baseVmId ?? null,
        vtime_ns: vm.vtimeNs ?? vm.id,
        security_floor: JSON.stringify(vm.securityFloor ?? {}),
      })
      .execute();
    return this.getById(vm.id);
  }

  async findByName(name: string): Promise<VmRecord | undefined> {
    const row = await this.db.selectFrom("vms").selectAll().where("name", "=", name).executeTakeFirst();
    return row ? toRecord(row) : undefined;
  }

  async getByName(name: string): Promise<VmRecord> {
    const vm = await this.findByName(name);
    if (!vm) throw errors.vmNotFound(name);
    return vm;
  }

  async getById(id: string): Promise<VmRecord> {
    const row = await this.db.selectFrom("vms").selectAll().where("id", "=", id).executeTakeFirst();
    if (!row) throw new VigilError("VIGIL_VM_NOT_FOUND", `VM with id ${q(id)} does not exist`);
    return toRecord(row);
  }

  list(): Promise<VmRecord[]> {
    return vmRows.all(this.db);
  }

  /**
   * The same list as `list`, read once per change of the table (vm-list-cache.ts) and shared by every caller:
   * frozen, for reads over every VM on each request (the inventory summary, quota usage).
   */
  listShared(): Promise<readonly Readonly<VmRecord>[]> {
    let shared = sharedLists.get(this.db);
    if (!shared) sharedLists.set(this.db, (shared = new VmListCache(this.db, vmRows)));
    return shared.get();
  }

  async update(id: string, change: Partial<Updatable>): Promise<VmRecord> {
    const now = new Date().toISOString();
    const values: VmRowUpdate = { updated_at: now };
    if (change.state !== undefined) {
      values.state = change.state;
      values.state_changed_at = now;
    }
    if (change.accelerator !== undefined) values.accelerator = change.accelerator;
    if (change.pid !== undefined) values.pid = change.pid;
    if (change.vmgenid !== undefined) values.vmgenid = change.vmgenid;
    if (change.generation !== undefined) values.generation = change.generation;
    if (change.owner !== undefined) values.owner = change.owner;
    if (change.approver !== undefined) values.approver = change.approver;
    if (change.spec !== undefined) values.spec = JSON.stringify(change.spec);
    if (change.isTemplate !== undefined) values.is_template = change.isTemplate ? 1 : 0;
    if (change.host !== undefined) values.host = change.host;
    if (change.currentSnapshotId !== undefined) values.current_snapshot_id = change.currentSnapshotId;
    if (change.resumeSnapshotId !== undefined) values.resume_snapshot_id = change.resumeSnapshotId;
    if (change.securityFloor !== undefined) values.security_floor = JSON.stringify(change.securityFloor);
    if (change.vtimeNs !== undefined) values.vtime_ns = change.vtimeNs;
    await this.db.updateTable("vms").set(values).where("id", "=", id).execute();
    return this.getById(id);
  }

  /** Linked clones whose disks are overlays on this template's disks. */
  async dependentsOf(id: string): Promise<VmRecord[]> {
    const rows = await this.db.selectFrom("vms").selectAll().where("base_vm_id", "=", id).orderBy("name").execute();
    return rows.map(toRecord);
  }

  async delete(id: string): Promise<void> {
    await this.db.deleteFrom("vms").where("id", "=", id).execute();
  }
}
