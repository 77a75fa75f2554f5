/**
 * The source side of a live migration (docs/cluster.md, "Live migration" step 4 and "The migration engine"):
 * pure QMP on the source QEMU's monitor, no vigil services and no processes. The disks are mirrored over NBD
 * to the target's exports, then RAM is pre-copied with QEMU's TLS while the downtime limit adapts; at
 * `pre-switchover` (the source is paused) the mirrors are completed, then QEMU finishes the switchover. Any
 * failure, the caller's signal or the timeout undoes everything this side added, and the VM keeps running here.
 *
 * Everything is bounded: each poll loop has a deadline, each QMP command a timeout, and sizes QEMU reports are
 * clamped (qmp-info.ts) before they are used.
 */
import { z } from "zod";
import { VigilError, messageOf, q } from "../errors.ts";
import { parseOrThrow } from "../validation.ts";
import type { MigrationLimits, MigrationPhase, MigrationProgress, MigrationResult } from "../cluster/types.ts";
import {
  DowntimeAdapter,
  limitsSchema,
  outgoingDiskSchema,
  parseBlockJobs,
  parseMigrateInfo,
  parseStatus,
  tlsHostnameSchema,
  type BlockJobInfo,
  type MigrateInfo,
  type Qmp,
} from "./qmp-info.ts";

export interface OutgoingOptions {
  /** Directory holding ca-cert.pem, client-cert.pem and client-key.pem (QEMU reads it). */
  tlsDir: string;
  /** The name the target's server certificate must carry (SAN DNS), e.g. `<id>.migration.vigil`. */
  tlsHostname: string;
  /** Unix socket relayed to the target's migration listener. */
  migrateSocket: string;
  /** Unix socket relayed to the target's NBD server. */
  nbdSocket: string;
  disks: { node: string; exportName: string; sync: "top" | "full" }[];
  limits: MigrationLimits;
  /** The capabilities to enable (negotiate.ts); default: the required ones and auto-converge. */
  capabilities?: string[];
  signal?: AbortSignal;
  onProgress?: (progress: MigrationProgress) => void;
  /** How often QEMU is polled (ms), default 100. */
  pollMs?: number;
  /**
   * Runs at pre-switchover, the guest paused and its disks complete, before QEMU sends the device state: the last
   * moment the source can still keep the VM. It throws to abort (the VM resumes here).
   */
  beforeSwitchover?: () => Promise<void>;
}

/** The downtime limit the adaptive rule starts from (ms). */
export const START_DOWNTIME_MS = 10;
/** "No bandwidth cap": QEMU takes a byte rate, so a cap no link reaches (1 TiB/s). */
const UNLIMITED_BANDWIDTH = 2 ** 40;
const TLS_ID = "vigil-mig-tls";
const COMMAND_TIMEOUT_MS = 10_000;
/** How often, and how far apart (ms), a `completed` without its downtime yet is asked again. */
const FIGURES_POLLS = 40;
const FIGURES_POLL_MS = 25;
/** Clean-up and switchover waits: how long block jobs get to end, and a cancelled migration to settle. */
const SETTLE_MS = 30_000;

const outgoingSchema = z.strictObject({
  tlsDir: z.string().startsWith("/", "must be an absolute path").max(4096),
  tlsHostname: tlsHostnameSchema,
  migrateSocket: z.string().startsWith("/", "must be an absolute path").max(107),
  nbdSocket: z.string().startsWith("/", "must be an absolute path").max(107),
  disks: z.array(outgoingDiskSchema).max(64),
  limits: limitsSchema,
  // Whatever was negotiated, the engine relies on these three (see "set the migration capabilities" below).
  capabilities: z.array(z.string().max(64)).max(32).refine((c) => ["pause-before-switchover", "events", "return-path"].every((r) => c.includes(r)), "must include pause-before-switchover, events and return-path").optional(),
  signal: z.instanceof(AbortSignal).optional(),
  onProgress: z.function().optional(),
  pollMs: z.number().int().min(1).max(10_000).optional(),
  beforeSwitchover: z.function().optional(),
});

/** Thrown inside the run to unwind into the abort path with the reason the run stopped. */
class Stop extends Error {
  constructor(readonly kind: "cancelled" | "timeout") {
    super(kind);
  }
}

/** Waits `ms`, or less when the signal aborts or `wake` fires (an event worth polling for). */
const sleep = (ms: number, signal: AbortSignal | undefined, wake?: { fire?: (() => void) | undefined }) =>
  new Promise<void>((resolve) => {
    const timer = setTimeout(done, ms);
    if (wake) wake.fire = done;
    function done() {
      clearTimeout(timer);
      signal?.removeEventListener("abort", done);
      if (wake) wake.fire = undefined;
      resolve();
    }
    signal?.addEventListener("abort", done, { once: true });
  });

/**
 * Migrates the VM behind `qmp` to the target prepared by `prepareIncoming`. Resolves with what QEMU measured once
 * the migration has completed (the source is then stopped with its disks inactive: the caller quits it). Throws a
 * VigilError naming the step that failed after undoing this side's changes; the VM is then running here again.
 */
export async function runOutgoing(qmp: Qmp, options: OutgoingOptions): Promise<MigrationResult> {
  const opts = parseOrThrow(outgoingSchema, options, "migration options");
  const { limits, signal, disks } = opts;
  const onProgress = options.onProgress;
  const pollMs = opts.pollMs ?? 100;
  const started = Date.now();
  const deadline = started + limits.timeoutMs;
  const adapter = new DowntimeAdapter(START_DOWNTIME_MS, limits.maxDowntimeMs);
  const added = { creds: false, nbdNodes: [] as string[], jobs: [] as string[], migrate: false, wasRunning: false };
  let step = "check the source";
  let diskTransferred = 0;
  let throttlePercent = 0;
  let continued = false;

  const run = <T = unknown>(command: string, args?: Record<string, unknown>) =>
    qmp.execute<T>(command, args, { timeoutMs: COMMAND_TIMEOUT_MS });
  const checkpoint = () => {
    if (signal?.aborted) throw new Stop("cancelled");
    if (Date.now() > deadline) throw new Stop("timeout");
  };
  const report = (phase: MigrationPhase, info: MigrateInfo | undefined, jobs: BlockJobInfo[]) => {
    if (!onProgress) return;
    const ours = jobs.filter((j) => added.jobs.includes(j.id));
    onProgress({
      phase,
      ramTransferred: info?.transferred ?? 0,
      ramRemaining: info?.remaining ?? 0,
      ramTotal: info?.total ?? 0,
      dirtyRate: info?.dirtyRate ?? 0,
      expectedDowntimeMs: info?.expectedDowntimeMs ?? 0,
      downtimeLimitMs: adapter.limitMs,
      iterations: info?.dirtySyncCount ?? 0,
      diskDone: ours.reduce((s, j) => s + j.offset, 0),
      diskTotal: ours.reduce((s, j) => s + j.len, 0),
    });
  };
  /** Our mirror jobs now; a job that vanished or reports an error fails the migration. */
  const mirrors = async (): Promise<BlockJobInfo[]> => {
    const jobs = parseBlockJobs(await run("query-block-jobs"));
    for (const [i, id] of added.jobs.entries()) {
      const job = jobs.find((j) => j.id === id);
      const disk = q(disks[i]?.node);
      if (!job) throw new VigilError("VIGIL_QEMU", `The mirror of disk ${disk} ended unexpectedly`);
      if (job.error) throw new VigilError("VIGIL_QEMU", `The mirror of disk ${disk} failed: ${job.error}`);
      if (job.status === "concluded" || job.status === "aborting") throw new VigilError("VIGIL_QEMU", `The mirror of disk ${disk} stopped (${job.status})`);
    }
    diskTransferred = jobs.filter((j) => added.jobs.includes(j.id)).reduce((s, j) => s + j.offset, 0);
    return jobs;
  };
  const result = (info: MigrateInfo): MigrationResult => ({
    downtimeMs: info.downtimeMs,
    totalMs: Date.now() - started,
    ramTransferred: info.transferred,
    diskTransferred,
    iterations: info.dirtySyncCount,
    finalDowntimeLimitMs: adapter.limitMs,
    throttlePercent: Math.max(info.throttlePercent, throttlePercent),
  });

  // QEMU announces each migration status change and each job status change: poll again at once.
  const wake: { fire?: (() => void) | undefined } = {};
  const unsubscribe = qmp.onEvent?.((e) => {
    if (e.event === "MIGRATION" || e.event === "JOB_STATUS_CHANGE" || e.event === "BLOCK_JOB_READY") wake.fire?.();
  });
  try {
    return await migrate();
  } finally {
    unsubscribe?.();
  }

  async function migrate(): Promise<MigrationResult> {
    try {
      const status = parseStatus(await run("query-status"));
      added.wasRunning = status.running;
      const before = parseMigrateInfo(await run("query-migrate"));
      if (["setup", "active", "pre-switchover", "device", "cancelling", "postcopy-active"].includes(before.status)) {
        throw new VigilError("VIGIL_BUSY", `Cannot start a migration: one is already ${before.status}`);
      }
      // (query-migrate says "completed" on a VM that arrived here by migration too: the run state tells them apart)
      if (status.status === "postmigrate") {
        // its disks are inactive and its VM runs elsewhere: migrating or resuming it would fork the VM
        throw new VigilError("VIGIL_INVALID_STATE", "Cannot start a migration: this QEMU has already migrated its VM away");
      }
      report("setup", undefined, []);

      step = "add the TLS credentials";
      await run("object-add", { "qom-type": "tls-creds-x509", id: TLS_ID, dir: opts.tlsDir, endpoint: "client", "verify-peer": true });
      added.creds = true;

      for (const [i, disk] of disks.entries()) {
        checkpoint();
        const nbdNode = `vigil-mig-nbd${i}`;
        step = `connect disk ${q(disk.node)} to the target's NBD export`;
        await run("blockdev-add", {
          driver: "nbd",
          "node-name": nbdNode,
          server: { type: "unix", path: opts.nbdSocket },
          export: disk.exportName,
          "tls-creds": TLS_ID,
          "tls-hostname": opts.tlsHostname,
        });
        added.nbdNodes.push(nbdNode);
        step = `start the mirror of disk ${q(disk.node)}`;
        const job = `vigil-mig-mirror${i}`;
        // auto-dismiss off: a job that ends stays visible (with its error) until we dismiss it, so polling alone
        // tells a completed mirror from a failed one.
        await run("blockdev-mirror", { "job-id": job, device: disk.node, target: nbdNode, sync: disk.sync, "auto-dismiss": false });
        added.jobs.push(job);
      }

      step = "mirror the disks";
      for (;;) {
        checkpoint();
        const jobs = await mirrors();
        report("disks", undefined, jobs);
        if (jobs.filter((j) => added.jobs.includes(j.id)).every((j) => j.ready)) break;
        await sleep(pollMs, signal, wake);
      }

      checkpoint();
      step = "set the migration capabilities";
      // return-path: without it a source whose stream the target refused (its TLS authz) still reports completed,
      // and would then let its VM go (measured with QEMU 7.2 and TLS 1.3; src/cluster/ca-qemu.test.ts).
      await run("migrate-set-capabilities", {
        capabilities: (opts.capabilities ?? ["pause-before-switchover", "auto-converge", "events", "return-path"]).map((capability) => ({ capability, state: true })),
      });
      step = "set the migration parameters";
      await run("migrate-set-parameters", {
        "tls-creds": TLS_ID,
        "tls-hostname": opts.tlsHostname,
        "downtime-limit": adapter.limitMs,
        "max-bandwidth": limits.maxBandwidth === 0 ? UNLIMITED_BANDWIDTH : limits.maxBandwidth,
      });
      step = "start the migration";
      added.migrate = true;
      await run("migrate", { uri: `unix:${opts.migrateSocket}` });

      step = "copy the RAM";
      for (;;) {
        checkpoint();
        const info = parseMigrateInfo(await run("query-migrate"));
        const jobs = added.jobs.length > 0 ? await mirrors() : [];
        if (info.throttlePercent > 0) throttlePercent = info.throttlePercent;
        switch (info.status) {
          case "setup":
          case "active":
          case "device":
          case "wait-unplug": {
            if (continued) {
              report("switchover", info, jobs); // "device": QEMU is sending the last RAM and the device state
              break;
            }
            const limit = adapter.observe(info.dirtySyncCount, info.remaining);
            if (limit !== undefined) await run("migrate-set-parameters", { "downtime-limit": limit });
            report("ram", info, jobs);
            break;
          }
          case "pre-switchover": {
            report("switchover", info, jobs);
            if (continued) break; // QEMU has not left the state yet since our migrate-continue
            continued = true;
            step = "complete the disk mirrors";
            await completeMirrors();
            if (options.beforeSwitchover) {
              // The guest is paused: what the hook hands over (the monotonic store) is final. A failure aborts.
              step = "hand over what the VM's host keeps for it";
              await options.beforeSwitchover();
            }
            step = "continue the switchover";
            await run("migrate-continue", { state: "pre-switchover" });
            step = "switch over";
            break;
          }
          case "completed": {
            const figures = await settledFigures(info);
            const done = result(figures);
            report("completed", figures, []);
            await run("object-del", { id: TLS_ID }).catch(() => undefined);
            return done;
          }
          case "failed":
            throw new VigilError("VIGIL_QEMU", `QEMU reports the migration failed: ${info.error ?? "no reason given"}`);
          default:
            throw new VigilError("VIGIL_QEMU", `The migration stopped unexpectedly (status ${q(info.status)})`);
        }
        await sleep(pollMs, signal, wake);
      }
    } catch (err) {
      const kind = err instanceof Stop ? err.kind : "failed";
      const outcome = await abort();
      if (outcome.completed) {
        // The cancel lost the race: QEMU had already switched over, the VM now runs on the target. Reporting a
        // failure here would make the caller kill the only running copy.
        report("completed", outcome.completed, []);
        return result(outcome.completed);
      }
      report(kind === "cancelled" ? "cancelled" : "failed", undefined, []);
      const cleanup = outcome.problems.length > 0 ? ` (clean-up: ${outcome.problems.join("; ")})` : "";
      if (kind === "cancelled") throw new VigilError("VIGIL_CONFLICT", `Migration cancelled at step ${q(step)}; the VM keeps running here${cleanup}`);
      if (kind === "timeout") {
        throw new VigilError("VIGIL_TIMEOUT", `Migration timed out after ${limits.timeoutMs} ms at step ${q(step)}; the VM keeps running here${cleanup}`);
      }
      const code = err instanceof VigilError ? err.code : "VIGIL_QEMU";
      throw new VigilError(code, `Migration failed at step ${q(step)}: ${messageOf(err)}${cleanup}`, { cause: err });
    }

  }

  /**
   * QEMU 7.2 sets `completed` a moment before its migration thread computes the downtime (and total time): a
   * poll in between reads downtime 0 (10 of 60 migrations measured on this host). A real pre-copy
   * switchover with pause-before-switchover never takes under 1 ms, so 0 means "not yet": ask again, briefly.
   */
  async function settledFigures(info: MigrateInfo): Promise<MigrateInfo> {
    for (let i = 0; i < FIGURES_POLLS && info.downtimeMs === 0; i++) {
      await sleep(FIGURES_POLL_MS, undefined);
      const again = parseMigrateInfo(await run("query-migrate"));
      if (again.status !== "completed") break;
      info = again;
    }
    return info;
  }

  /** At pre-switchover (source paused): soft-cancel each READY mirror (it completes, the copy consistent). */
  async function completeMirrors(): Promise<void> {
    for (const job of added.jobs) await run("block-job-cancel", { device: job });
    const until = Math.min(deadline, Date.now() + SETTLE_MS);
    for (;;) {
      const jobs = parseBlockJobs(await run("query-block-jobs")).filter((j) => added.jobs.includes(j.id));
      const failed = jobs.find((j) => j.error);
      if (failed) throw new VigilError("VIGIL_QEMU", `The mirror ${q(failed.id)} failed at completion: ${failed.error}`);
      if (jobs.every((j) => j.status === "concluded" || j.status === "null")) {
        diskTransferred = jobs.reduce((s, j) => s + j.offset, 0);
        break;
      }
      checkpoint();
      if (Date.now() > until) throw new VigilError("VIGIL_TIMEOUT", "The disk mirrors did not complete in time");
      await sleep(50, signal, wake);
    }
    for (const job of [...added.jobs]) {
      await run("job-dismiss", { id: job });
      added.jobs.splice(added.jobs.indexOf(job), 1);
    }
    for (const node of [...added.nbdNodes]) {
      await run("blockdev-del", { "node-name": node });
      added.nbdNodes.splice(added.nbdNodes.indexOf(node), 1);
    }
  }

  /**
   * Undoes this side: cancel the migration and wait until QEMU has settled, force-cancel and dismiss the mirrors,
   * delete the NBD nodes and the credentials, and resume the VM if it ran before and is paused now. Every step is
   * attempted even when an earlier one failed; what failed is returned for the error message.
   */
  async function abort(): Promise<{ completed?: MigrateInfo; problems: string[] }> {
    const problems: string[] = [];
    const attempt = async (what: string, fn: () => Promise<unknown>) => {
      try {
        await fn();
      } catch (err) {
        problems.push(`${what}: ${messageOf(err)}`);
      }
    };
    const until = Date.now() + SETTLE_MS;
    if (added.migrate) {
      await attempt("migrate_cancel", () => run("migrate_cancel"));
      await attempt("wait for the cancel", async () => {
        for (;;) {
          const info = parseMigrateInfo(await run("query-migrate"));
          if (!["setup", "active", "pre-switchover", "device", "cancelling", "wait-unplug"].includes(info.status)) return;
          if (Date.now() > until) throw new VigilError("VIGIL_TIMEOUT", `still ${info.status}`);
          await sleep(50, undefined);
        }
      });
      const info = parseMigrateInfo(await run("query-migrate").catch(() => undefined));
      if (info.status === "completed") return { completed: info, problems };
    }
    for (const job of added.jobs) await attempt(`block-job-cancel ${job}`, () => run("block-job-cancel", { device: job, force: true }));
    if (added.jobs.length > 0) {
      await attempt("wait for the mirrors to end", async () => {
        for (;;) {
          const jobs = parseBlockJobs(await run("query-block-jobs")).filter((j) => added.jobs.includes(j.id));
          if (jobs.every((j) => j.status === "concluded" || j.status === "null")) return;
          if (Date.now() > until) throw new VigilError("VIGIL_TIMEOUT", "mirrors still running");
          await sleep(50, undefined);
        }
      });
      for (const job of added.jobs) await attempt(`job-dismiss ${job}`, () => run("job-dismiss", { id: job }));
    }
    for (const node of added.nbdNodes) await attempt(`blockdev-del ${node}`, () => run("blockdev-del", { "node-name": node }));
    if (added.creds) await attempt("object-del", () => run("object-del", { id: TLS_ID }));
    await attempt("resume the VM", async () => {
      const now = parseStatus(await run("query-status"));
      if (added.wasRunning && !now.running) await run("cont");
    });
    return { problems };
  }
}
