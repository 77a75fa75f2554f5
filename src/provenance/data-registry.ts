/**
 * The data-lifetime registry: every file vigil writes that holds a VM's data is registered with where it is,
 * what it is for, its size and (where cheap) its sha256. `vigil vm where` lists it; purge walks it. A file that
 * leaves vigil's reach (an exported bundle copied elsewhere) stays listed, so nobody can forget it exists.
 */
import { createHash, randomUUID } from "node:crypto";
import { createReadStream, statSync } from "node:fs";
import type { Db } from "../inventory/db.ts";
import type { DataFileRow } from "../inventory/schema.ts";

export type DataPurpose = "disk" | "ram" | "console-log" | "qemu-log" | "snapshot" | "bundle" | "runtime";

export interface DataFile {
  id: string;
  vmId: string;
  host: string;
  path: string;
  purpose: DataPurpose;
  size: number | null;
  sha256: string | null;
  createdAt: string;
  removedAt: string | null;
  removedHow: string | null;
}

function toDataFile(r: DataFileRow): DataFile {
  return {
    id: r.id,
    vmId: r.vm_id,
    host: r.host,
    path: r.path,
    purpose: r.purpose as DataPurpose,
    size: r.size,
    sha256: r.sha256,
    createdAt: r.created_at,
    removedAt: r.removed_at,
    removedHow: r.removed_how,
  };
}

/** sha256 of a file, streamed. */
export function sha256File(path: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const h = createHash("sha256");
    createReadStream(path)
      .on("data", (d) => h.update(d))
      .on("error", reject)
      .on("end", () => resolve(h.digest("hex")));
  });
}

/** Files larger than this are registered without a hash (hashing a 20 GiB disk is not cheap). */
const HASH_LIMIT_BYTES = 64 * 1024 * 1024;

export class DataRegistry {
  constructor(
    private readonly db: Db,
    private readonly host: string,
  ) {}

  /**
   * Registers (or refreshes) a file. Idempotent per (vm, path) while the file is live. A path names one file:
   * if another VM's live registration on this host holds the same path, that file was overwritten by this one
   * (an export written over an older bundle), so the older record is closed with `supersededBy` as its reason
   * — purging the older VM must not destroy what now belongs to this one, and `where` must not list it as live.
   * Placeholders that are not paths ("(downloaded by …)") name no file and supersede nothing.
   */
  async register(vmId: string, path: string, purpose: DataPurpose, options: { hash?: boolean; supersededBy?: string } = {}): Promise<void> {
    let size: number | null = null;
    let sha256: string | null = null;
    try {
      size = statSync(path).size;
      if (options.hash !== false && size <= HASH_LIMIT_BYTES) sha256 = await sha256File(path);
    } catch {
      /* not there yet (e.g. a socket or RAM file QEMU creates): register the path anyway */
    }
    if (path.startsWith("/")) {
      await this.db
        .updateTable("data_files")
        .set({ removed_at: new Date().toISOString(), removed_how: `overwritten by ${options.supersededBy ?? `a file of VM ${vmId}`}` })
        .where("host", "=", this.host)
        .where("path", "=", path)
        .where("vm_id", "!=", vmId)
        .where("removed_at", "is", null)
        .execute();
    }
    const existing = await this.db.selectFrom("data_files").select("id").where("vm_id", "=", vmId).where("path", "=", path).where("removed_at", "is", null).executeTakeFirst();
    if (existing) {
      await this.db.updateTable("data_files").set({ size, sha256 }).where("id", "=", existing.id).execute();
      return;
    }
    await this.db
      .insertInto("data_files")
      .values({ id: randomUUID(), vm_id: vmId, host: this.host, path, purpose, size, sha256, created_at: new Date().toISOString(), removed_at: null, removed_how: null })
      .execute();
  }

  async markRemoved(vmId: string, path: string, how: string): Promise<void> {
    await this.db.updateTable("data_files").set({ removed_at: new Date().toISOString(), removed_how: how }).where("vm_id", "=", vmId).where("path", "=", path).where("removed_at", "is", null).execute();
  }

  async list(vmId: string, options: { includeRemoved?: boolean } = {}): Promise<DataFile[]> {
    let q = this.db.selectFrom("data_files").selectAll().where("vm_id", "=", vmId);
    if (!options.includeRemoved) q = q.where("removed_at", "is", null);
    return (await q.orderBy("created_at").execute()).map(toDataFile);
  }
}
