/**
 * The firewall's rows in the inventory: policy versions per VM (append-only: a change is a new version, old ones
 * stay as history), the quarantine set, and the quarantine zone's services.
 */
import type { Db } from "../../inventory/db.ts";
import type { QuarantineService } from "./compile.ts";
import { parsePolicy, type Policy } from "./policy.ts";

export interface PolicyVersion {
  vmId: string;
  version: number;
  policy: Policy;
  actor: string;
  createdAt: string;
}

export interface QuarantineEntry {
  vmId: string;
  since: string;
  reason: string;
  actor: string;
}

function toVersion(r: { vm_id: string; version: number; policy: string; actor: string; created_at: string }): PolicyVersion {
  // Stored policies passed the schema when written; parsing again keeps a hand-edited row from reaching nft.
  return { vmId: r.vm_id, version: r.version, policy: parsePolicy(JSON.parse(r.policy)), actor: r.actor, createdAt: r.created_at };
}

export class FirewallRepository {
  constructor(private readonly db: Db) {}

  /** The VM's current policy version, or undefined when it never had one (it then has the default policy). */
  async current(vmId: string): Promise<PolicyVersion | undefined> {
    const r = await this.db.selectFrom("fw_policies").selectAll().where("vm_id", "=", vmId).orderBy("version", "desc").limit(1).executeTakeFirst();
    return r ? toVersion(r) : undefined;
  }

  /** Every VM's current policy (for the compiler). */
  async currentAll(): Promise<Map<string, PolicyVersion>> {
    const rows = await this.db.selectFrom("fw_policies").selectAll().orderBy("vm_id").orderBy("version").execute();
    const out = new Map<string, PolicyVersion>();
    for (const r of rows) out.set(r.vm_id, toVersion(r));
    return out;
  }

  async history(vmId: string): Promise<PolicyVersion[]> {
    const rows = await this.db.selectFrom("fw_policies").selectAll().where("vm_id", "=", vmId).orderBy("version").execute();
    return rows.map(toVersion);
  }

  /** Appends version `version`; the primary key refuses a second writer of the same version. */
  async append(vmId: string, version: number, policy: Policy, actor: string): Promise<PolicyVersion> {
    const row = { vm_id: vmId, version, policy: JSON.stringify(policy), actor, created_at: new Date().toISOString() };
    await this.db.insertInto("fw_policies").values(row).execute();
    return toVersion(row);
  }

  async quarantined(): Promise<Map<string, QuarantineEntry>> {
    const rows = await this.db.selectFrom("quarantine").selectAll().execute();
    return new Map(rows.map((r) => [r.vm_id, { vmId: r.vm_id, since: r.since, reason: r.reason, actor: r.actor }]));
  }

  async quarantine(entry: QuarantineEntry): Promise<void> {
    await this.db.insertInto("quarantine").values({ vm_id: entry.vmId, since: entry.since, reason: entry.reason, actor: entry.actor }).execute();
  }

  async release(vmId: string): Promise<boolean> {
    const r = await this.db.deleteFrom("quarantine").where("vm_id", "=", vmId).executeTakeFirst();
    return Number(r.numDeletedRows) > 0;
  }

  async services(): Promise<QuarantineService[]> {
    const rows = await this.db.selectFrom("quarantine_services").selectAll().orderBy("name").execute();
    return rows.map((r) => ({ name: r.name, ip: r.ip, proto: r.proto === "udp" ? "udp" : "tcp", port: r.port }));
  }

  async addService(s: QuarantineService): Promise<void> {
    await this.db.insertInto("quarantine_services").values({ name: s.name, ip: s.ip, proto: s.proto, port: s.port }).execute();
  }

  async removeService(name: string): Promise<boolean> {
    const r = await this.db.deleteFrom("quarantine_services").where("name", "=", name).executeTakeFirst();
    return Number(r.numDeletedRows) > 0;
  }
}
