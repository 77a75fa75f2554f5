/**
 * What the migration engine reads back from QEMU, shape-checked and bounded: `query-migrate`, `query-block-jobs`,
 * `query-status`. QEMU runs guest-facing emulation, so nothing it reports is trusted as a size or a count without
 * being clamped to a non-negative safe integer; an unknown status is reported as such rather than guessed. Also the
 * adaptive downtime limit, a pure rule over the passes QEMU reports, and the option schemas of the engine.
 */
import { z } from "zod";
import type { QmpClient } from "../qemu/qmp-client.ts";

/**
 * The part of a QMP client the engine uses (so tests may script a peer). Events are optional: the engine polls
 * either way, and uses MIGRATION and JOB_STATUS_CHANGE events only to poll again at once (the switchover waits
 * on the engine, so every poll interval it sleeps through is downtime).
 */
export type Qmp = Pick<QmpClient, "execute"> & Partial<Pick<QmpClient, "onEvent">>;

/** The migration statuses QEMU 7.2 reports (MigrationStatus); anything else is "unknown". */
const STATUSES = [
  "none", "setup", "cancelling", "cancelled", "active", "postcopy-active", "postcopy-paused", "postcopy-recover",
  "completed", "failed", "colo", "pre-switchover", "device", "wait-unplug",
] as const;
export type MigrateStatus = (typeof STATUSES)[number] | "unknown";

export interface MigrateInfo {
  status: MigrateStatus;
  transferred: number;
  remaining: number;
  total: number;
  /** Dirty pages per second × page size. */
  dirtyRate: number;
  expectedDowntimeMs: number;
  /** Completed dirty-bitmap syncs: one per pre-copy pass. */
  dirtySyncCount: number;
  downtimeMs: number;
  totalTimeMs: number;
  throttlePercent: number;
  /** QEMU's error-desc when failed, cut to 512 characters. */
  error: string | undefined;
}

/** A count QEMU reports, clamped: negative, fractional, non-numeric or huge values never reach a decision. */
export function count(value: unknown): number {
  if (typeof value !== "number" || !Number.isFinite(value) || value <= 0) return 0;
  return Math.min(Math.floor(value), Number.MAX_SAFE_INTEGER);
}

function record(value: unknown): Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value) ? (value as Record<string, unknown>) : {};
}

/** Reads a `query-migrate` return value. */
export function parseMigrateInfo(raw: unknown): MigrateInfo {
  const m = record(raw);
  const ram = record(m.ram);
  const status = typeof m.status === "string" && (STATUSES as readonly string[]).includes(m.status) ? (m.status as MigrateStatus) : "unknown";
  const pageSize = count(ram["page-size"]) || 4096;
  return {
    status,
    transferred: count(ram.transferred),
    remaining: count(ram.remaining),
    total: count(ram.total),
    dirtyRate: Math.min(count(ram["dirty-pages-rate"]) * Math.min(pageSize, 1 << 21), Number.MAX_SAFE_INTEGER),
    expectedDowntimeMs: count(m["expected-downtime"]),
    dirtySyncCount: count(ram["dirty-sync-count"]),
    downtimeMs: count(m.downtime),
    totalTimeMs: count(m["total-time"]),
    throttlePercent: Math.min(count(m["cpu-throttle-percentage"]), 100),
    error: typeof m["error-desc"] === "string" ? m["error-desc"].slice(0, 512) : undefined,
  };
}

export interface BlockJobInfo {
  id: string;
  ready: boolean;
  offset: number;
  len: number;
  /** "running", "ready", "concluded", … (QEMU's JobStatus), cut to 32 characters. */
  status: string;
  error: string | undefined;
}

/** Reads a `query-block-jobs` return value: at most 1024 jobs are looked at. */
export function parseBlockJobs(raw: unknown): BlockJobInfo[] {
  if (!Array.isArray(raw)) return [];
  const jobs: BlockJobInfo[] = [];
  for (const item of raw.slice(0, 1024)) {
    const j = record(item);
    if (typeof j.device !== "string") continue;
    jobs.push({
      id: j.device.slice(0, 128),
      ready: j.ready === true,
      offset: count(j.offset),
      len: count(j.len),
      status: typeof j.status === "string" ? j.status.slice(0, 32) : "unknown",
      error: typeof j.error === "string" ? j.error.slice(0, 512) : undefined,
    });
  }
  return jobs;
}

/** Reads `query-status`: whether the vCPUs run, and QEMU's run state (cut to 32 characters). */
export function parseStatus(raw: unknown): { running: boolean; status: string } {
  const s = record(raw);
  return { running: s.running === true, status: typeof s.status === "string" ? s.status.slice(0, 32) : "unknown" };
}

/**
 * The adaptive downtime limit: starts low (a short pause when the guest lets the copy converge) and doubles, up to
 * `maxMs`, each time a pre-copy pass ended with no fewer bytes left than the pass before it (the guest dirties as
 * fast as the copy goes, so waiting longer at this limit gains nothing).
 */
export class DowntimeAdapter {
  private lastSync = -1;
  private lastRemaining: number | undefined;
  limitMs: number;

  constructor(
    startMs: number,
    private readonly maxMs: number,
  ) {
    this.limitMs = Math.min(startMs, maxMs);
  }

  /** Feeds one sample; returns the new limit when it changed, else undefined. */
  observe(syncCount: number, remaining: number): number | undefined {
    if (syncCount <= this.lastSync) return undefined;
    const stalled = this.lastRemaining !== undefined && this.lastSync >= 1 && remaining >= this.lastRemaining;
    this.lastSync = syncCount;
    this.lastRemaining = remaining;
    if (!stalled || this.limitMs >= this.maxMs) return undefined;
    this.limitMs = Math.min(this.limitMs * 2, this.maxMs);
    return this.limitMs;
  }
}

// Option schemas. QEMU node names hold at most 31 characters (BlockDriverState.node_name[32]) and must start
// with a letter; NBD export names are capped well below the protocol's 4096 bytes.
const nodeName = z.string().regex(/^[A-Za-z][A-Za-z0-9_.-]{0,30}$/, "must be a QEMU node name: a letter, then up to 30 letters, digits or _.-");
const exportName = z.string().regex(/^[A-Za-z0-9_.:-]{1,128}$/, "must be 1-128 letters, digits or _.:-");
/** A unix socket path: absolute, and short enough for sun_path (108 bytes with its NUL). */
const socketPath = z
  .string()
  .startsWith("/", "must be an absolute path")
  .refine((p) => Buffer.byteLength(p) <= 107, "must be at most 107 bytes (a unix socket path)")
  .refine((p) => !p.includes(","), "must not contain a comma");
const dirPath = z.string().startsWith("/", "must be an absolute path").max(4096);

export const incomingOptionsSchema = z.strictObject({
  tlsDir: dirPath,
  /** The distinguished name of the source's certificate, as QEMU's TLS session reports it. */
  authzIdentity: z.string().min(1).max(1024),
  migrateSocket: socketPath,
  nbdSocket: socketPath,
  disks: z.array(z.strictObject({ node: nodeName, exportName })).max(64),
});

export const outgoingDiskSchema = z.strictObject({ node: nodeName, exportName, sync: z.enum(["top", "full"]) });

export const limitsSchema = z.strictObject({
  maxDowntimeMs: z.number().int().min(10).max(60_000),
  timeoutMs: z.number().int().min(100).max(24 * 3600_000),
  maxBandwidth: z.number().int().min(0).max(Number.MAX_SAFE_INTEGER),
});

export const tlsHostnameSchema = z.string().regex(/^[A-Za-z0-9.-]{1,253}$/, "must be a DNS name");
