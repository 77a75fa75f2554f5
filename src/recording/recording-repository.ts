/**
 * The recordings table (migration 0010-recordings). What a recording is — the QEMU build it needs, its log's digest,
 * its end point, the disks at its start — is one JSON document (`RecordingMeta`), because it is written once when
 * the recording ends and always read whole (`vigil recording show`).
 */
import type { ShadowStatus } from "./shadow.ts";
import type { Kysely } from "kysely";
import type { Database, RecordingsTable } from "../inventory/schema.ts";
import type { VmSpec } from "../vm/spec.ts";

/**
 * recording: QEMU is recording. complete: ended at a known point (instruction count, RAM digest): replayable and
 * verifiable. aborted: QEMU died without its end point (killed, crashed, vigil restarted): kept, not replayable.
 */
export type RecordingState = "recording" | "complete" | "aborted";

export interface RecordedDisk {
  name: string;
  /** The disk as it was when the recording began: a flattened, compressed qcow2 in the recording's directory. */
  file: string;
  sha256: string;
  bytes: number;
}

export interface RecordingMeta {
  vm: { id: string; name: string; generation: number; vmgenid: string };
  /** A log replays only on the QEMU that wrote it: its version and the binary's sha256, checked before a replay. */
  qemu: { version: string; sha256: string };
  /** The spec QEMU ran with (kernel, initrd, disks, NICs): a replay builds the same machine from it. */
  spec: VmSpec;
  /** sha256 of the kernel and initrd the recording booted (a replay refuses other files under those names). */
  boot: { kernelSha256: string; initrdSha256: string } | null;
  disks: RecordedDisk[];
  startedAt: string;
  endedAt: string | null;
  durationMs: number | null;
  actor: string;
  /** The compressed log: its digest is what a replay checks first (a changed log is refused). */
  log: { file: string; sha256: string; storedBytes: number; rawBytes: number; header: string } | null;
  /** The end point: the instruction count at which QEMU was paused, the RAM digest there, and the serial output up to it. */
  end: { icount: number; memorySha256: string; serialBytes: number; serialSha256: string; reason: string } | null;
  /** The serial transcript (everything QEMU wrote to the console while recording), for comparison with a replay. */
  serialFile: string;
  error: string | null;
  /** With `--shadow`: what the trailing replica checked, its lag and what it found (shadow.ts), as at the end. */
  shadow?: ShadowStatus | null;
}

export interface RecordingRow {
  id: string;
  name: string;
  vmId: string;
  state: RecordingState;
  meta: RecordingMeta;
  createdAt: string;
  updatedAt: string;
}

function toRow(r: RecordingsTable): RecordingRow {
  return { id: r.id, name: r.name, vmId: r.vm_id, state: r.state as RecordingState, meta: JSON.parse(r.meta) as RecordingMeta, createdAt: r.created_at, updatedAt: r.updated_at };
}

export class RecordingRepository {
  constructor(private readonly db: Kysely<Database>) {}

  async insert(row: { id: string; name: string; vmId: string; meta: RecordingMeta }): Promise<RecordingRow> {
    const now = new Date().toISOString();
    await this.db.insertInto("recordings").values({ id: row.id, name: row.name, vm_id: row.vmId, state: "recording", meta: JSON.stringify(row.meta), created_at: now, updated_at: now }).execute();
    return (await this.get(row.id))!;
  }

  async get(id: string): Promise<RecordingRow | undefined> {
    const r = await this.db.selectFrom("recordings").selectAll().where("id", "=", id).executeTakeFirst();
    return r ? toRow(r) : undefined;
  }

  async byName(name: string): Promise<RecordingRow | undefined> {
    const r = await this.db.selectFrom("recordings").selectAll().where("name", "=", name).executeTakeFirst();
    return r ? toRow(r) : undefined;
  }

  async list(vmIds?: readonly string[]): Promise<RecordingRow[]> {
    let query = this.db.selectFrom("recordings").selectAll().orderBy("created_at").orderBy("name");
    if (vmIds) {
      if (vmIds.length === 0) return [];
      query = query.where("vm_id", "in", vmIds);
    }
    return (await query.execute()).map(toRow);
  }

  /** The next free `<vm>-<n>` name (names outlive their VM's renames: they are looked up, never parsed). */
  async nextName(vmName: string): Promise<string> {
    const taken = new Set((await this.db.selectFrom("recordings").select("name").where("name", "like", `${vmName}-%`).execute()).map((r) => r.name));
    for (let n = 1; ; n++) if (!taken.has(`${vmName}-${n}`)) return `${vmName}-${n}`;
  }

  async update(id: string, state: RecordingState, meta: RecordingMeta): Promise<RecordingRow> {
    await this.db.updateTable("recordings").set({ state, meta: JSON.stringify(meta), updated_at: new Date().toISOString() }).where("id", "=", id).execute();
    return (await this.get(id))!;
  }

  async delete(id: string): Promise<void> {
    await this.db.deleteFrom("recordings").where("id", "=", id).execute();
  }
}
