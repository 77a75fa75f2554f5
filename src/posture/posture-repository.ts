/**
 * The posture tables (migration 0008-posture): each VM's last scan and when it last ran, and the gate policies by
 * scope. Scans are stored whole (JSON) because the record is what `vigil posture VM` shows; the state is never
 * stored, it is computed when asked (posture-state.ts), so it cannot go stale itself.
 */
import type { Kysely } from "kysely";
import type { Database } from "../inventory/schema.ts";
import type { PosturePolicy, Severity } from "./posture-state.ts";

/** One scan of a VM, as recorded. `pending` and `findings` are what the state is computed from. */
export interface ScanRecord {
  scannedAt: string;
  /** "offline": the dormant image was read; "in-band": through the guest agent while it ran. */
  how: "offline" | "in-band";
  advisoriesSha256: string;
  rulesSha256: string;
  /** False when a budget ended the signature scan early. */
  complete: boolean;
  os?: { id?: string; versionId?: string; prettyName?: string };
  packages: { name: string; version: string; arch: string }[];
  pending: { package: string; installed: string; candidate: string; severity: Severity; cves: string[] }[];
  findings: { path: string; rule: string; pattern: string; offset: number; excerptHex: string }[];
  /** What the scan could not do, e.g. files skipped by size. */
  notes: string[];
  elapsedMs: number;
}

/** The gate's policy: the posture policy plus whether a VM that is not `current` starts in quarantine. */
export interface GatePolicy extends PosturePolicy {
  gate: boolean;
}

export interface PostureRow {
  vmId: string;
  scan: ScanRecord | null;
  lastRunningAt: string | null;
  lastPatchedAt: string | null;
  updatedAt: string;
}

export class PostureRepository {
  constructor(private readonly db: Kysely<Database>) {}

  async get(vmId: string): Promise<PostureRow | undefined> {
    const r = await this.db.selectFrom("vm_postures").selectAll().where("vm_id", "=", vmId).executeTakeFirst();
    return r ? { vmId: r.vm_id, scan: r.scan === null ? null : (JSON.parse(r.scan) as ScanRecord), lastRunningAt: r.last_running_at, lastPatchedAt: r.last_patched_at, updatedAt: r.updated_at } : undefined;
  }

  /** Whether any VM has a scan recorded: stops at the first one, and parses no scan. */
  async anyScanned(): Promise<boolean> {
    return (await this.db.selectFrom("vm_postures").select("vm_id").where("scan", "is not", null).limit(1).executeTakeFirst()) !== undefined;
  }

  async all(): Promise<PostureRow[]> {
    const rows = await this.db.selectFrom("vm_postures").selectAll().execute();
    return rows.map((r) => ({ vmId: r.vm_id, scan: r.scan === null ? null : (JSON.parse(r.scan) as ScanRecord), lastRunningAt: r.last_running_at, lastPatchedAt: r.last_patched_at, updatedAt: r.updated_at }));
  }

  private async upsert(vmId: string, change: { scan?: string; last_running_at?: string; last_patched_at?: string }): Promise<void> {
    const updated_at = new Date().toISOString();
    await this.db
      .insertInto("vm_postures")
      .values({ vm_id: vmId, scan: change.scan ?? null, last_running_at: change.last_running_at ?? null, last_patched_at: change.last_patched_at ?? null, updated_at })
      .onConflict((oc) => oc.column("vm_id").doUpdateSet({ ...change, updated_at }))
      .execute();
  }

  recordScan(vmId: string, scan: ScanRecord): Promise<void> {
    return this.upsert(vmId, { scan: JSON.stringify(scan) });
  }

  markRunning(vmId: string, at: string): Promise<void> {
    return this.upsert(vmId, { last_running_at: at });
  }

  markPatched(vmId: string, at: string): Promise<void> {
    return this.upsert(vmId, { last_patched_at: at });
  }

  async policies(): Promise<Map<string, { policy: GatePolicy; actor: string; updatedAt: string }>> {
    const rows = await this.db.selectFrom("posture_policies").selectAll().execute();
    return new Map(rows.map((r) => [r.scope, { policy: JSON.parse(r.policy) as GatePolicy, actor: r.actor, updatedAt: r.updated_at }]));
  }

  async setPolicy(scope: string, policy: GatePolicy, actor: string): Promise<void> {
    const updated_at = new Date().toISOString();
    const json = JSON.stringify(policy);
    await this.db
      .insertInto("posture_policies")
      .values({ scope, policy: json, actor, updated_at })
      .onConflict((oc) => oc.column("scope").doUpdateSet({ policy: json, actor, updated_at }))
      .execute();
  }

  async removePolicy(scope: string): Promise<boolean> {
    const r = await this.db.deleteFrom("posture_policies").where("scope", "=", scope).executeTakeFirst();
    return Number(r.numDeletedRows) > 0;
  }
}
