/**
 * A replica: QEMU replaying a recording (docs/recording.md, "Replay"). It boots the machine the recording ran —
 * the same spec, kernel and initrd (checked by digest), fresh overlays over the disks as they were when the
 * recording began — and feeds it the log instead of the world. It runs in the jail like the VM itself (the VM's
 * uid, cgroups of its own): what it executes is the guest's code. It can run to an instruction count and stop
 * there, where its RAM can be hashed or introspected and its serial output read.
 */
import { createHash, randomUUID } from "node:crypto";
import { chownSync, closeSync, existsSync, readFileSync, readSync, readdirSync, rmSync, statSync } from "node:fs";
import { join } from "node:path";
import { VigilError, messageOf, q } from "../errors.ts";
import type { Db } from "../inventory/db.ts";
import { checkJailAvailable, hostCgroupSpecs, jailEnabled, removeCgroups } from "../host/jail.ts";
import { ensurePrivateDir, ensurePrivateFile } from "../host/private-dir.ts";
import { openGuestRam } from "../host/guest-ram.ts";
import { signal, startQemu, waitForExit } from "../host/qemu-process.ts";
import { buildArgv, guestRamBytes } from "../qemu/argv.ts";
import { createOverlay } from "../qemu/qemu-img.ts";
import { QmpClient } from "../qemu/qmp-client.ts";
import { vmLayout, type VmLayout } from "../paths.ts";
import { sha256File } from "../provenance/data-registry.ts";
import { handOverFiles, planJail } from "../vm/jail-launch.ts";
import type { VmRecord } from "../vm/vm-repository.ts";
import { diskFile } from "../vm/vm-view.ts";
import type { RecordingRow } from "./recording-repository.ts";

/** sha256 of a QEMU's whole guest RAM, read through its memfd (never a file): the digest of an end point. */
export function hashGuestRam(pid: number, bytes: number): string {
  const fd = openGuestRam(pid, bytes);
  try {
    const h = createHash("sha256");
    const buf = Buffer.alloc(1 << 20);
    for (let pos = 0; pos < bytes; ) {
      const n = readSync(fd, buf, 0, Math.min(buf.length, bytes - pos), pos);
      if (n === 0) throw new VigilError("VIGIL_HOST", `Guest RAM of QEMU ${pid} ended at ${pos} of ${bytes} bytes`);
      h.update(buf.subarray(0, n));
      pos += n;
    }
    return h.digest("hex");
  } finally {
    closeSync(fd);
  }
}

/** A replay whose instruction count has not moved for this long has diverged (idle guests warp the clock, they do not stall). */
const STALL_MS = 30_000;

export interface ReplicaDeps {
  db: Db;
  /** Where replicas live: one short-named directory each (socket paths stay under 108 bytes). */
  replicasDir: string;
  /** Writes the recording's log, checked and decompressed, to `outPath` (log-store.ts expandLog). */
  expandLog: (rec: RecordingRow, outPath: string) => Promise<void>;
}

export class Replica {
  private stopped = false;

  private constructor(
    readonly id: string,
    readonly layout: VmLayout,
    readonly pid: number,
    readonly qmp: QmpClient,
    readonly ramBytes: number,
    readonly exited: Promise<unknown>,
    private readonly jailed: boolean,
  ) {}

  /**
   * Boots a replica of `rec` (of VM `vm`), paused before its first instruction. With `follow`, the replica trails
   * a recording still in progress (shadow.ts): `follow` makes its log file and keeps appending the recording's log
   * to it; otherwise it replays the complete recording's stored log.
   */
  static async launch(deps: ReplicaDeps, vm: VmRecord, rec: RecordingRow, follow?: (fifo: string) => Promise<void>): Promise<Replica> {
    const meta = rec.meta;
    if (!follow && (rec.state !== "complete" || !meta.log || !meta.end)) throw new VigilError("VIGIL_INVALID_STATE", `Recording ${q(rec.name)} is ${rec.state}: only a complete recording can be replayed`, { field: "recording" });
    if (meta.boot && meta.spec.boot.kind === "kernel") {
      for (const [file, want] of [[meta.spec.boot.kernel, meta.boot.kernelSha256], [meta.spec.boot.initrd, meta.boot.initrdSha256]] as const) {
        if (!existsSync(file) || (await sha256File(file)) !== want) throw new VigilError("VIGIL_INVALID_STATE", `Cannot replay ${q(rec.name)}: ${q(file)} is not the file it booted (its sha256 changed or it is gone)`, { field: "recording" });
      }
    }
    const id = randomUUID().slice(0, 8);
    const l = vmLayout(deps.replicasDir, id);
    ensurePrivateDir(deps.replicasDir);
    rmSync(l.dir, { recursive: true, force: true });
    ensurePrivateDir(l.dir);
    ensurePrivateDir(l.runDir);
    ensurePrivateDir(l.disksDir);
    ensurePrivateFile(l.consoleLog);
    const jailed = jailEnabled();
    try {
      const spec = { ...meta.spec, disks: meta.spec.disks.map((d) => ({ name: d.name })) };
      for (const d of meta.disks) await createOverlay(diskFile(l.disksDir, d.name), d.file);
      const logFile = join(l.runDir, "replay.log");
      if (follow) await follow(logFile);
      else await deps.expandLog(rec, logFile);
      const plan = { spec, uuid: vm.id, vmgenid: meta.vm.vmgenid, accel: "tcg" as const, paths: l, diskFiles: Object.fromEntries(spec.disks.map((d) => [d.name, diskFile(l.disksDir, d.name)])), rr: { mode: "replay" as const, logFile } };
      let jail: { binary: string; argv: readonly string[]; pidFile: string } | undefined;
      if (jailed) {
        checkJailAvailable();
        const bases = new Set(meta.disks.map((d) => d.file));
        const replicaVm: VmRecord = { ...vm, spec: { ...spec, disks: meta.disks.map((d) => ({ name: d.name, backing: d.file })) } };
        const j = await planJail(deps.db, replicaVm, l, "tcg", { has: (f) => bases.has(f) }, [], (backing) => buildArgv({ ...plan, backing }), { cgroupId: `replica-${id}` });
        handOverFiles(replicaVm, l, j.confinement.uid);
        chownSync(logFile, j.confinement.uid, j.confinement.uid);
        jail = j;
      }
      const started = await startQemu(jail ? [] : buildArgv(plan), { qmpSocket: l.qmpSocket, pidFile: l.pidFile, qemuLog: l.qemuLog, sockets: [l.qmpSocket, l.serialSocket, l.agentSocket], jail });
      const qmp = await QmpClient.connect(l.qmpSocket, { timeoutMs: 20_000 });
      return new Replica(id, l, started.pid, qmp, guestRamBytes(meta.spec.memoryMiB, "tcg"), started.exited, jailed);
    } catch (err) {
      cleanup(l.dir, id, jailed);
      throw err;
    }
  }

  /** Whether the replica paused at the guest's power-off (shutdown=pause): it cannot go further. */
  async atShutdown(): Promise<boolean> {
    return (await this.qmp.execute<{ status: string }>("query-status")).status === "shutdown";
  }

  /** Calls `listener` when the replayed guest resets (reboots). */
  onReset(listener: () => void): void {
    this.qmp.onEvent((e) => {
      if (e.event === "RESET") listener();
    });
  }

  /** The instruction count the replica is at. */
  async icount(): Promise<number> {
    const r = await this.qmp.execute<{ icount: number; mode: string }>("query-replay");
    return r.icount;
  }

  /**
   * Replays up to instruction `icount` and stops there. Resolves with the count reached (less than asked when the
   * guest powered off earlier in the recording, or the log ended). Never goes backwards (a replay only moves on).
   */
  async runTo(icount: number, timeoutMs: number): Promise<number> {
    const now = await this.icount();
    if (icount <= now) return now;
    await this.qmp.execute("replay-break", { icount });
    const stop = this.qmp.waitEvent("STOP", { timeoutMs });
    // Handled now: QEMU may exit (rejecting it) before the race below is entered.
    stop.catch(() => undefined);
    const ended = this.exited.then(() => "exited" as const);
    await this.qmp.execute("cont");
    // A replay that diverged from its log waits forever for an event that never comes: no progress is a failure.
    let stuck: NodeJS.Timeout | undefined;
    const stalled = new Promise<"stalled">((resolve) => {
      let last = -1;
      let since = Date.now();
      stuck = setInterval(() => {
        void this.icount().then((n) => {
          if (n !== last) {
            last = n;
            since = Date.now();
          } else if (Date.now() - since > STALL_MS) resolve("stalled");
        }, () => undefined);
      }, 2000);
    });
    // QEMU exiting also fails the STOP wait ("QMP closed"), often before `exited` settles: that is an exit too, so
    // the error below carries qemu.log's tail while the replica's directory still holds it.
    const stopped = stop.then(
      () => "stopped" as const,
      async (err: unknown) => {
        const exitedSoon = await Promise.race([ended.then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), 2000).unref())]);
        if (exitedSoon) return "exited" as const;
        throw err;
      },
    );
    const why = await Promise.race([stopped, ended, stalled]).finally(() => clearInterval(stuck));
    if (why === "stalled") throw new VigilError("VIGIL_QEMU", `The replay stopped making progress at instruction ${await this.icount()} before ${icount}: it diverged from the recording (an input QEMU did not record?)`);
    if (why === "exited") throw new VigilError("VIGIL_QEMU", `The replica stopped replaying before instruction ${icount} (QEMU exited; see ${q(this.layout.qemuLog)}: ${tailOf(this.layout.qemuLog)})`);
    const reached = await this.icount();
    return reached;
  }

  /** The serial output the replica has written so far. */
  serial(): Buffer {
    return readFileSync(this.layout.consoleLog);
  }

  memorySha256(): string {
    return hashGuestRam(this.pid, this.ramBytes);
  }

  async close(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    await this.qmp.execute("quit").catch(() => undefined);
    if (!(await waitForExit(this.pid, 5000))) {
      signal(this.pid, "SIGKILL");
      await waitForExit(this.pid, 5000);
    }
    await this.qmp.close().catch(() => undefined);
    cleanup(this.layout.dir, this.id, this.jailed);
  }
}

function tailOf(path: string): string {
  try {
    return readFileSync(path, "utf8").trim().split("\n").slice(-3).join(" | ");
  } catch (err) {
    return messageOf(err);
  }
}

function cleanup(dir: string, id: string, jailed: boolean): void {
  if (jailed) removeCgroups(hostCgroupSpecs(`replica-${id}`));
  rmSync(dir, { recursive: true, force: true });
}

/** Replicas left by a daemon that died mid-replay: each QEMU is killed by the pid its jail helper recorded, then its directory goes. */
export function sweepReplicas(replicasDir: string): void {
  if (!existsSync(replicasDir)) return;
  for (const name of readdirSync(replicasDir)) {
    const l = vmLayout(replicasDir, name);
    const pidFile = join(l.dir, "jail.pid");
    if (existsSync(pidFile)) {
      const pid = Number(readFileSync(pidFile, "utf8").trim());
      if (Number.isSafeInteger(pid) && pid > 1) signal(pid, "SIGKILL");
    }
    if (statSync(l.dir, { throwIfNoEntry: false })?.isDirectory()) cleanup(l.dir, name, true);
  }
}
