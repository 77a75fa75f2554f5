/**
 * A VM's posture where the VM goes (docs/transience.md "Posture follows the VM"): a live or cold move carries its
 * last scan, when it last ran and was patched, and the gate policy set for that very VM (scope `vm:<name>`) in the
 * dossier, so the target computes the same state the source did — a moved VM is not `unknown` and an infected
 * one is not clean. A clone gets the scan and times too (its disk is the source's disk at that moment, and the
 * state computation marks a scan older than the last run stale as it would for the source) but not the source's
 * own policy, which an operator set for that VM alone; a clone from a snapshot gets nothing: the scan described
 * the current disk, not the snapshot's.
 * What a dossier carries is hostile input: every list and string is bounded here.
 */
import { z } from "zod";
import type { Kysely, Transaction } from "kysely";
import type { Database } from "../inventory/schema.ts";
import { gatePolicySchema } from "./posture-service.ts";
import { SEVERITIES } from "./posture-state.ts";
import { PostureRepository, type GatePolicy } from "./posture-repository.ts";

const text = (n: number) => z.string().max(n);
const time = z.string().max(64);

/** The largest scan a dossier may carry: a full Debian install has a few thousand packages. */
export const TRANSFER_LIMITS = { packages: 50_000, pending: 50_000, findings: 10_000, notes: 200 } as const;

export const scanRecordSchema = z.strictObject({
  scannedAt: time,
  how: z.enum(["offline", "in-band"]),
  advisoriesSha256: text(128),
  rulesSha256: text(128),
  complete: z.boolean(),
  os: z.strictObject({ id: text(64).optional(), versionId: text(64).optional(), prettyName: text(256).optional() }).optional(),
  packages: z.array(z.strictObject({ name: text(256), version: text(256), arch: text(64) })).max(TRANSFER_LIMITS.packages),
  pending: z.array(z.strictObject({ package: text(256), installed: text(256), candidate: text(256), severity: z.enum(SEVERITIES), cves: z.array(text(32)).max(1000) })).max(TRANSFER_LIMITS.pending),
  findings: z.array(z.strictObject({ path: text(4096), rule: text(256), pattern: text(256), offset: z.number().int().min(0).max(Number.MAX_SAFE_INTEGER), excerptHex: z.string().regex(/^[0-9a-f]{0,512}$/) })).max(TRANSFER_LIMITS.findings),
  notes: z.array(text(1000)).max(TRANSFER_LIMITS.notes),
  elapsedMs: z.number().min(0).max(Number.MAX_SAFE_INTEGER),
});

export const postureTransferSchema = z.strictObject({
  scan: scanRecordSchema.nullable(),
  lastRunningAt: time.nullable(),
  lastPatchedAt: time.nullable(),
  /** The gate policy of scope `vm:<name>`, if one was set for this VM. */
  policy: z.strictObject({ policy: gatePolicySchema, actor: text(128), updatedAt: time }).nullable(),
});

export type PostureTransfer = z.output<typeof postureTransferSchema>;

type Db = Kysely<Database> | Transaction<Database>;

/** The VM's posture to carry, or null when it has none (never scanned, never ran, no policy of its own). */
export async function readPosture(db: Db, vm: { id: string; name: string }): Promise<PostureTransfer | null> {
  // The row as the posture repository reads it (its JSON parsed there); the VM's own policy is one scope.
  const row = await new PostureRepository(db).get(vm.id);
  const pol = await db.selectFrom("posture_policies").selectAll().where("scope", "=", `vm:${vm.name}`).executeTakeFirst();
  if (!row && !pol) return null;
  return {
    scan: row?.scan ?? null,
    lastRunningAt: row?.lastRunningAt ?? null,
    lastPatchedAt: row?.lastPatchedAt ?? null,
    policy: pol ? { policy: JSON.parse(pol.policy) as GatePolicy, actor: pol.actor, updatedAt: pol.updated_at } : null,
  };
}

/** Writes a carried posture for `vmId` (a new row: the VM arrived or was just made), its policy when `withPolicy`. */
export async function writePosture(db: Db, vm: { id: string; name: string }, p: PostureTransfer, opts: { withPolicy: boolean }): Promise<void> {
  const vmId = vm.id;
  if (p.scan || p.lastRunningAt || p.lastPatchedAt) {
    await db.insertInto("vm_postures").values({ vm_id: vmId, scan: p.scan ? JSON.stringify(p.scan) : null, last_running_at: p.lastRunningAt, last_patched_at: p.lastPatchedAt, updated_at: new Date().toISOString() }).execute();
  }
  if (opts.withPolicy && p.policy) {
    const row = { policy: JSON.stringify(p.policy.policy), actor: p.policy.actor, updated_at: p.policy.updatedAt };
    // Replacing one left from an earlier stay of this VM here (before forgetting it on the way out existed).
    await db.insertInto("posture_policies").values({ scope: `vm:${vm.name}`, ...row }).onConflict((oc) => oc.column("scope").doUpdateSet(row)).execute();
  }
}

/** Removes what writePosture wrote (a move that failed after it). */
export async function removePosture(db: Db, vm: { id: string; name: string }): Promise<void> {
  await db.deleteFrom("vm_postures").where("vm_id", "=", vm.id).execute();
  await db.deleteFrom("posture_policies").where("scope", "=", `vm:${vm.name}`).execute();
}

/** A clone's posture: the source's scan and times, not its own policy (posture-transfer's header says why). */
export async function copyPostureToClone(db: Db, source: { id: string; name: string }, clone: { id: string; name: string }): Promise<void> {
  const p = await readPosture(db, source);
  if (p) await writePosture(db, clone, p, { withPolicy: false });
}
