/**
 * Location history: every host and storage path a VM has lived on, with times. "Where has your VM been?" is
 * answered from here; migration and import add entries, nothing ever deletes one.
 */
import type { Db } from "../inventory/db.ts";

export interface Location {
  host: string;
  path: string;
  since: string;
  until: string | null;
}

export class LocationHistory {
  constructor(private readonly db: Db) {}

  /** Records that the VM now lives at host:path, closing the previous open entry. */
  async moveTo(vmId: string, host: string, path: string): Promise<void> {
    const now = new Date().toISOString();
    const open = await this.db.selectFrom("vm_locations").select(["id", "host", "path"]).where("vm_id", "=", vmId).where("until", "is", null).executeTakeFirst();
    if (open && open.host === host && open.path === path) return;
    if (open) await this.db.updateTable("vm_locations").set({ until: now }).where("id", "=", open.id).execute();
    await this.db.insertInto("vm_locations").values({ vm_id: vmId, host, path, since: now, until: null }).execute();
  }

  async close(vmId: string): Promise<void> {
    await this.db.updateTable("vm_locations").set({ until: new Date().toISOString() }).where("vm_id", "=", vmId).where("until", "is", null).execute();
  }

  async list(vmId: string): Promise<Location[]> {
    const rows = await this.db.selectFrom("vm_locations").select(["host", "path", "since", "until"]).where("vm_id", "=", vmId).orderBy("id").execute();
    return rows;
  }
}
