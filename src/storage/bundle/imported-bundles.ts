/**
 * The bundles this site has imported, by the sha256 of their signed manifest (the bundle's identity: every byte
 * of the bundle is bound to it through the hashes it lists). A second import of the same bundle is a replay: it
 * would resume the same saved memory again, or bring back a state the site has since moved past, so it is refused
 * unless the request says `allowReplay` (and then recorded as such in this table and in the audit log).
 */
import type { Db } from "../../inventory/db.ts";

export interface ImportedBundle {
  manifestSha256: string;
  vmId: string;
  importedBy: string;
  importedAt: string;
  replay: boolean;
}

export class ImportedBundles {
  constructor(private readonly db: Db) {}

  /** Earlier imports of the bundle whose manifest has this sha256, oldest first. */
  async of(manifestSha256: string): Promise<ImportedBundle[]> {
    const rows = await this.db.selectFrom("imported_bundles").selectAll().where("manifest_sha256", "=", manifestSha256).orderBy("id").execute();
    return rows.map((r) => ({ manifestSha256: r.manifest_sha256, vmId: r.vm_id, importedBy: r.imported_by, importedAt: r.imported_at, replay: r.replay === 1 }));
  }

  async record(entry: { manifestSha256: string; signerKeyId: string; sourceVmId: string; vmId: string; importedBy: string; replay: boolean }): Promise<void> {
    await this.db
      .insertInto("imported_bundles")
      .values({
        manifest_sha256: entry.manifestSha256,
        signer_key_id: entry.signerKeyId,
        source_vm_id: entry.sourceVmId,
        vm_id: entry.vmId,
        imported_by: entry.importedBy,
        imported_at: new Date().toISOString(),
        replay: entry.replay ? 1 : 0,
      })
      .execute();
  }
}
