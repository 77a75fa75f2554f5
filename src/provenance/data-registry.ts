/**
 * The data-lifetime registry: every file vigil writes that holds a VM's data is registered with where it is,
 * what it is for, its size and (where cheap) its sha256, and which file it is (device and inode). `vigil vm where`
 * lists it; purge walks it and erases only files vigil made, below the VM's directory, that are still the file
 * registered. A copy that leaves vigil's reach (an exported bundle) is listed as the client reported it, so nobody
 * can forget it exists — and nothing a client says is ever erased.
 */
import { createHash, randomUUID } from "node:crypto";
import { createReadStream } from "node:fs";
import { isAbsolute, normalize } from "node:path";
import { VigilError, q } from "../errors.ts";
import { identityOf, type FileIdentity } from "../host/erase.ts";
import type { Db } from "../inventory/db.ts";
import type { DataFileRow } from "../inventory/schema.ts";

export type DataPurpose = "disk" | "ram" | "console-log" | "qemu-log" | "snapshot" | "bundle" | "runtime" | "capture" | "recording";

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

export type IntentKind = "materialize" | "snapshot-create" | "snapshot-revert";

/** Work begun and not yet finished or undone (see `DataRegistry.intend`). */
export interface Intent {
  id: string;
  vmId: string;
  kind: IntentKind;
  path: string;
  data: Record<string, unknown>;
  createdAt: string;
}

/** A registration as purge sees it: whether vigil made the file, and which file it was. */
export interface RegisteredFile extends DataFile {
  origin: "vigil" | "client";
  identity: FileIdentity | undefined;
}

export class DataRegistry {
  constructor(
    private readonly db: Db,
    private readonly host: string,
    /** When given, only files below this directory (vigil's `vms/`) can be registered. */
    private readonly vmsDir?: string,
    /** The agent's `--shared-storage` directory: shared VMs' disks (DIR/<uuid>/disks) can be registered there too. */
    private readonly sharedStorage?: string,
  ) {}

  /**
   * Registers (or refreshes) a file vigil made, with its device, inode and size now: purge erases that file and
   * no other one that may later carry its name. Idempotent per (vm, path) while the file is live. Only vigil's
   * own files are registered here; where a client says it saved a copy is `reportLocation`.
   */
  async register(vmId: string, path: string, purpose: DataPurpose, options: { hash?: boolean } = {}): Promise<void> {
    if (!isAbsolute(path) || normalize(path) !== path) throw new VigilError("VIGIL_INTERNAL", `Cannot register ${q(path)}: not a plain absolute path`, { field: "path" });
    const below = (root: string | undefined) => root !== undefined && path.startsWith(root + "/");
    if (this.vmsDir !== undefined && !below(this.vmsDir) && !below(this.sharedStorage)) throw new VigilError("VIGIL_INTERNAL", `Cannot register ${q(path)}: not below vigil's directory ${q(this.vmsDir)}`, { field: "path" });
    let size: number | null = null;
    let sha256: string | null = null;
    let dev: string | null = null;
    let ino: string | null = null;
    const id = identityOf(path);
    if (id?.regular) {
      ({ size, dev, ino } = id);
      if (options.hash !== false && size <= HASH_LIMIT_BYTES) sha256 = await sha256File(path);
    }
    // Not there yet (e.g. a file QEMU creates): registered by name; purge then still requires it to be a
    // regular file with one link inside the VM's directory.
    const existing = await this.db.selectFrom("data_files").select("id").where("vm_id", "=", vmId).where("path", "=", path).where("removed_at", "is", null).where("origin", "=", "vigil").executeTakeFirst();
    if (existing) {
      await this.db.updateTable("data_files").set({ size, sha256, dev, ino }).where("id", "=", existing.id).execute();
      return;
    }
    await this.db
      .insertInto("data_files")
      .values({ id: randomUUID(), vm_id: vmId, host: this.host, path, purpose, size, sha256, dev, ino, origin: "vigil", created_at: new Date().toISOString(), removed_at: null, removed_how: null })
      .execute();
  }

  /**
   * Records where a client says a copy went (an export's `x-vigil-output`), as information only: vigil cannot
   * check it (the client's machine, or any path on this one), so it is listed by `where`, reported by purge as
   * out of reach, never opened, and never closes another registration.
   */
  async reportLocation(vmId: string, reported: string | undefined, purpose: DataPurpose, actor: string): Promise<void> {
    const path = reported === undefined ? `(downloaded by ${actor}, location unknown)` : `(reported by ${actor}, not verified) ${reported}`;
    await this.db
      .insertInto("data_files")
      .values({ id: randomUUID(), vm_id: vmId, host: this.host, path, purpose, size: null, sha256: null, dev: null, ino: null, origin: "client", created_at: new Date().toISOString(), removed_at: null, removed_how: null })
      .execute();
  }

  async markRemoved(vmId: string, path: string, how: string): Promise<void> {
    await this.db.updateTable("data_files").set({ removed_at: new Date().toISOString(), removed_how: how }).where("vm_id", "=", vmId).where("path", "=", path).where("removed_at", "is", null).where("origin", "=", "vigil").execute();
  }

  async list(vmId: string, options: { includeRemoved?: boolean } = {}): Promise<DataFile[]> {
    return (await this.rows(vmId, options)).map(toDataFile);
  }

  /** Live registrations with what purge needs to decide: who made the file and which file it was. */
  async listForRemoval(vmId: string): Promise<RegisteredFile[]> {
    return (await this.rows(vmId, {})).map((r) => ({
      ...toDataFile(r),
      origin: r.origin === "vigil" ? "vigil" : "client",
      identity: r.dev !== null && r.ino !== null ? { dev: r.dev, ino: r.ino } : undefined,
    }));
  }

  /**
   * Records, before it starts, work that leaves files behind if vigil dies half-way (a VM directory before its
   * row exists, a step over several disks); `fulfil` closes it once the work is done or undone, and the daemon
   * finishes or rolls back whatever is still open at its next start.
   */
  async intend(vmId: string, kind: IntentKind, path: string, data: Record<string, unknown> = {}): Promise<string> {
    const id = randomUUID();
    await this.db.insertInto("intents").values({ id, vm_id: vmId, kind, path, data: JSON.stringify(data), created_at: new Date().toISOString() }).execute();
    return id;
  }

  async fulfil(intentId: string): Promise<void> {
    await this.db.deleteFrom("intents").where("id", "=", intentId).execute();
  }

  async openIntents(kind?: IntentKind): Promise<Intent[]> {
    let query = this.db.selectFrom("intents").selectAll();
    if (kind) query = query.where("kind", "=", kind);
    return (await query.orderBy("created_at").execute()).map((r) => ({ id: r.id, vmId: r.vm_id, kind: r.kind as IntentKind, path: r.path, data: JSON.parse(r.data) as Record<string, unknown>, createdAt: r.created_at }));
  }

  private async rows(vmId: string, options: { includeRemoved?: boolean }): Promise<DataFileRow[]> {
    let query = this.db.selectFrom("data_files").selectAll().where("vm_id", "=", vmId);
    if (!options.includeRemoved) query = query.where("removed_at", "is", null);
    return query.orderBy("created_at").execute();
  }
}
