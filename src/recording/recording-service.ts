/**
 * Recordings of a VM's execution (docs/recording.md), after PANDA, ReVirt and VMware's Aftersight: `vigil vm start
 * VM --record` runs the VM under QEMU's record/replay; the recording is a first-class object (list, show, delete,
 * export), registered in the data-lifetime registry like every copy of the VM's data; a replay re-executes it and
 * checks that it is the same execution (the serial output and the RAM digest at the recorded end point); bisect runs
 * the introspection checks on the replica at points of the replay and narrows down when a check first changed.
 *
 * A recording's life: rows and files are made under the VM's lock before QEMU starts (its disks as they are now,
 * copied flat and compressed, since the VM's own disks move on); QEMU records into its run dir; the recorder holds
 * QEMU's serial socket and serves the console through a relay; the log is compressed as it grows. The end point is
 * taken when the guest powers off (QEMU pauses instead of exiting, `-action shutdown=pause`): instruction count,
 * RAM digest, serial transcript so far; then QEMU quits, the log is finished and the recording is `complete`. A
 * QEMU that dies otherwise leaves an `aborted` recording (kept, listed, not replayable).
 */
import { createHash, randomUUID } from "node:crypto";
import { createReadStream, existsSync, readFileSync, realpathSync, rmSync, statSync } from "node:fs";
import { END, fileHeader, padding } from "../storage/bundle/tar.ts";
import { dirname, join } from "node:path";
import { imageInfo } from "../qemu/qemu-img.ts";
import { recordedPlaces } from "../vm/recorded-layers.ts";
import { VigilError, messageOf, q } from "../errors.ts";
import type { AuditLog } from "../audit/audit-log.ts";
import type { Guard, RequestContext } from "../auth/guard.ts";
import { SYSTEM_ACTOR } from "../auth/permissions.ts";
import type { Db } from "../inventory/db.ts";
import type { Logger } from "../log.ts";
import { ensurePrivateDir } from "../host/private-dir.ts";
import { QEMU_BINARY, resolveBinary } from "../host/qemu-process.ts";
import type { VmRuntime } from "../host/vm-runtime.ts";
import { guestRamBytes } from "../qemu/argv.ts";
import { sha256File, type DataRegistry } from "../provenance/data-registry.ts";
import { runCommand } from "../util/run-command.ts";
import { backingChain } from "../vm/jail-launch.ts";
import type { VmRecord } from "../vm/vm-repository.ts";
import type { VmService } from "../vm/vm-service.ts";
import type { VmView } from "../vm/vm-view.ts";
import { diskFile } from "../vm/vm-view.ts";
import { LogCompressor, expandLog } from "./log-store.ts";
import { recordRefusals } from "./record-plan.ts";
import { RecordingRepository, type RecordingMeta, type RecordingRow } from "./recording-repository.ts";
import { Replica, hashGuestRam, sweepReplicas } from "./replica.ts";
import { SerialRelay, type GateStatus } from "./serial-relay.ts";
import { Shadow, type ShadowStatus } from "./shadow.ts";
import { PacedPipe } from "./paced-pipe.ts";
import { bisectCheck, type BisectResult } from "./bisect.ts";

export interface RecordingDeps {
  db: Db;
  vms: VmService;
  guard: Guard;
  audit: AuditLog;
  registry: DataRegistry;
  log: Logger;
  /** Where replicas run (short paths): `<home>/rp`. */
  replicasDir: string;
}

export interface RecordingView {
  id: string;
  name: string;
  vm: string;
  vmId: string;
  state: RecordingRow["state"];
  generation: number;
  qemu: { version: string; sha256: string };
  startedAt: string;
  endedAt: string | null;
  durationMs: number | null;
  storedBytes: number | null;
  rawBytes: number | null;
  /** Compressed log bits per second of recording. */
  logKbps: number | null;
  rawKbps: number | null;
  instructions: number | null;
  endReason: string | null;
  disks: { name: string; bytes: number }[];
  error: string | null;
}

export interface ReplayResult {
  recording: string;
  reachedIcount: number;
  targetIcount: number;
  /** At the end point: whether the serial output and the RAM digest are the recording's. null before the end. */
  verified: { serial: boolean; memory: boolean | null; deterministic: boolean } | null;
  serialBytes: number;
  serialTail: string;
  elapsedMs: number;
  /** Recording wall time / replay wall time (≥ 1: faster than real time), for a replay to the end. */
  speed: number | null;
}

const REPLAY_MIN_TIMEOUT_MS = 10 * 60_000;
/** A recording's end point is taken within this after the guest powered off. */
const END_POINT_TIMEOUT_MS = 60_000;

interface Active {
  rec: RecordingRow;
  rt: VmRuntime;
  agentPipe: PacedPipe | undefined;
  relay: SerialRelay;
  compressor: LogCompressor;
  rawLog: string;
  startedAt: number;
  end: RecordingMeta["end"];
  shadow: Shadow | undefined;
}

let qemuBuild: Promise<{ version: string; sha256: string }> | undefined;
/** The QEMU this host records with: `--version`'s first line and the binary's sha256 (a log replays only on it). */
export function currentQemuBuild(): Promise<{ version: string; sha256: string }> {
  qemuBuild ??= (async () => {
    const bin = resolveBinary(QEMU_BINARY);
    const out = await runCommand(bin, ["--version"], { what: "Asking QEMU its version" });
    return { version: out.stdout.split("\n")[0]!.trim(), sha256: await sha256File(bin) };
  })();
  return qemuBuild;
}

/** Where a recording QEMU is: its instruction count (`query-replay`, a pure read that adds nothing to the log). */
async function liveIcount(rt: VmRuntime): Promise<number> {
  return (await rt.qmp.execute<{ icount: number }>("query-replay")).icount;
}

export function recordingDir(vmDir: string, recordingId: string): string {
  return join(vmDir, "recordings", recordingId.slice(0, 8));
}

export class RecordingService {
  readonly repo: RecordingRepository;
  private readonly active = new Map<string, Active>();

  constructor(private readonly d: RecordingDeps) {
    this.repo = new RecordingRepository(d.db);
    d.vms.addBeforeStopHook((vm, rt) => this.endOnStop(vm, rt));
  }

  /**
   * `vigil vm stop` of a recording VM: the end point is taken first, paused, before the power button is pressed
   * (QEMU 7.2 does not record the ACPI power button: a replay would wait for it forever). The guest then powers off
   * as usual; what it does after the end point is not part of the recording.
   */
  private async endOnStop(vm: VmRecord, rt: VmRuntime): Promise<void> {
    const a = this.active.get(vm.id);
    if (!a || a.end) return;
    const status = (await rt.qmp.execute<{ status: string }>("query-status")).status;
    if (status === "running") await rt.qmp.execute("stop");
    a.end = await this.endPoint(vm, rt, a, "vigil vm stop");
    if (status === "running") await rt.qmp.execute("cont");
  }

  /** At daemon start: a recording vigil was not there to finish is `aborted`; leftover replicas go. */
  async recover(): Promise<void> {
    sweepReplicas(this.d.replicasDir);
    for (const r of await this.repo.list()) {
      if (r.state !== "recording" || this.active.has(r.vmId)) continue;
      await this.repo.update(r.id, "aborted", { ...r.meta, error: "vigil was not running when the recording ended (or restarted during it): no end point" });
    }
  }

  view(r: RecordingRow): RecordingView {
    const m = r.meta;
    const secs = m.durationMs !== null && m.durationMs > 0 ? m.durationMs / 1000 : null;
    return {
      id: r.id, name: r.name, vm: m.vm.name, vmId: r.vmId, state: r.state, generation: m.vm.generation, qemu: m.qemu,
      startedAt: m.startedAt, endedAt: m.endedAt, durationMs: m.durationMs,
      storedBytes: m.log?.storedBytes ?? null, rawBytes: m.log?.rawBytes ?? null,
      logKbps: m.log && secs ? Math.round((m.log.storedBytes * 8) / secs / 100) / 10 : null,
      rawKbps: m.log && secs ? Math.round((m.log.rawBytes * 8) / secs / 100) / 10 : null,
      instructions: m.end?.icount ?? null, endReason: m.end?.reason ?? null,
      disks: m.disks.map((x) => ({ name: x.name, bytes: x.bytes })), error: m.error,
    };
  }

  // ---- recording ---------------------------------------------------------------------------------------------

  /** `vigil vm start VM --record`: refuses what QEMU cannot record before anything is made. */
  async startRecording(ctx: RequestContext, name: string, options: { wait?: boolean | undefined; waitTimeoutMs?: number | undefined; shadow?: boolean | undefined; gateOutput?: boolean | undefined } = {}): Promise<{ vm: VmView; recording: RecordingView }> {
    if (options.gateOutput && !options.shadow) throw new VigilError("VIGIL_BAD_REQUEST", "gateOutput: the output gate waits for the shadow's checks; it needs shadow as well", { field: "gateOutput" });
    const result = await this.d.vms.operate(ctx, name, { action: "recording.start", permission: "vm.control", details: { wait: options.wait ?? false, shadow: options.shadow ?? false, gateOutput: options.gateOutput ?? false } }, async (h) => {
      const vm = h.vm;
      if (vm.state !== "stopped" && vm.state !== "crashed") throw new VigilError("VIGIL_INVALID_STATE", `Cannot record VM ${q(vm.name)}: it is ${vm.state}; a recording starts from a stopped VM (its first instruction)`, { field: "state" });
      const refusals = recordRefusals(vm.spec);
      if (refusals.length > 0) {
        throw new VigilError("VIGIL_INVALID_SPEC", `Cannot record VM ${q(vm.name)}: ${refusals.map((r) => r.reason).join("; ")}`, { field: refusals[0]!.field });
      }
      const id = randomUUID();
      const dir = recordingDir(h.layout.dir, id);
      const rawLog = join(h.layout.runDir, "rr.log");
      let active: Active | undefined;
      try {
        ensurePrivateDir(join(h.layout.dir, "recordings"));
        ensurePrivateDir(dir);
        const disks = await this.copyDisks(vm, h.layout.dir, h.layout.disksDir, dir);
        const boot = vm.spec.boot.kind === "kernel" ? { kernelSha256: await sha256File(vm.spec.boot.kernel), initrdSha256: await sha256File(vm.spec.boot.initrd) } : null;
        const meta: RecordingMeta = {
          vm: { id: vm.id, name: vm.name, generation: vm.generation, vmgenid: vm.vmgenid },
          qemu: await currentQemuBuild(), spec: vm.spec, boot, disks,
          startedAt: new Date().toISOString(), endedAt: null, durationMs: null, actor: ctx.actor.name,
          log: null, end: null, serialFile: join(dir, "serial.out"), error: null,
        };
        const rec = await this.repo.insert({ id, name: await this.repo.nextName(vm.name), vmId: vm.id, meta });
        rmSync(rawLog, { force: true });
        await h.start({
          record: { logFile: rawLog },
          beforeCont: async (rt) => {
            const relay = await SerialRelay.open(h.layout.serialPipe, join(h.layout.runDir, "console-rr.sock"), meta.serialFile);
            const agentPipe = vm.spec.agent ? await PacedPipe.listen(h.layout.agentSocket, h.layout.agentPipe).catch((err: unknown) => { relay.close(); throw err; }) : undefined;
            // With a shadow, the raw log is freed only behind what its follower has copied.
            const compressor = LogCompressor.start(rawLog, join(dir, "log.zst"), options.shadow ? { punchLimit: () => active?.shadow?.rawOffset ?? 0 } : {});
            active = { rec, rt, relay, agentPipe, compressor, rawLog, startedAt: Date.now(), end: null, shadow: undefined };
            this.active.set(vm.id, active);
            this.d.vms.setConsoleRelay(vm.id, relay.relayPath);
            this.follow(vm, rt, active);
          },
        });
        // The shadow starts once the recording runs: its replica reads the first event while it starts.
        if (options.shadow && active) this.startShadow(vm, rec, active, options.gateOutput ?? false);
        return rec;
      } catch (err) {
        if (active) {
          active.relay.close();
          active.agentPipe?.close();
          await active.compressor.abort();
          this.active.delete(vm.id);
          this.d.vms.setConsoleRelay(vm.id, undefined);
        }
        rmSync(dir, { recursive: true, force: true });
        rmSync(rawLog, { force: true });
        await this.repo.delete(id);
        throw err;
      }
    }, (rec) => ({ recording: rec.name }));
    if (options.wait && result.meta.spec.agent) await this.d.vms.pingAgent(ctx, name, 1).catch(async () => this.waitAgent(ctx, name, options.waitTimeoutMs ?? 180_000));
    const vm = await this.d.vms.show(ctx, name);
    return { vm, recording: this.view((await this.repo.get(result.id))!) };
  }

  /** `--shadow`: a replica trails the recording and runs the IDS checks on its RAM (shadow.ts). */
  private startShadow(vm: VmRecord, rec: RecordingRow, a: Active, gateOutput: boolean): void {
    const log = this.d.log.child({ vm: vm.name, recording: rec.name, component: "shadow" });
    const live = () => liveIcount(a.rt);
    // The shadow's baseline waits for the guest to have booted: where the live VM was when its agent first answered.
    let agentAt: number | undefined;
    if (vm.spec.agent) void this.agentAnswered(a).then(async (ok) => (agentAt = ok ? await live().catch(() => undefined) : undefined));
    if (gateOutput) a.relay.gate(live);
    a.shadow = Shadow.start({
      rawLog: a.rawLog,
      launch: (follow) => Replica.launch(this.replicaDeps(), vm, rec, follow),
      liveIcount: live,
      ...(vm.spec.agent ? { baselineFrom: () => agentAt } : {}),
      onChecked: (icount) => a.relay.release(icount),
      onFinding: async (f, icount) => {
        // Containment: console output written after the finding stays held (the transcript keeps all of it).
        if (gateOutput) a.relay.hold(`the shadow found ${f.check} at instruction ${icount}`);
        await this.d.audit.append({
          actor: SYSTEM_ACTOR.name,
          action: "ids.finding",
          target: { kind: "vm", id: vm.id, name: vm.name },
          result: "ok",
          details: { sweep: null, check: f.check, severity: f.severity, message: f.message, evidence: f.evidence, policy: gateOutput ? "gate-output" : "alert", shadow: { recording: rec.name, icount } },
        });
      },
      log,
    });
  }

  /** Resolves true once the recording VM's agent answers (1 s settled, like the live IDS), false if it ends first. */
  private async agentAnswered(a: Active): Promise<boolean> {
    while (this.active.get(a.rec.vmId) === a) {
      try {
        await (await a.rt.agentClient()).ping(3000);
        await new Promise((r) => setTimeout(r, 1000));
        return true;
      } catch {
        await new Promise((r) => setTimeout(r, 1000));
      }
    }
    return false;
  }

  private async waitAgent(ctx: RequestContext, name: string, timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      try {
        await this.d.vms.pingAgent(ctx, name, 1);
        return;
      } catch (err) {
        if (Date.now() > deadline) throw new VigilError("VIGIL_TIMEOUT", `VM ${q(name)} is recording, but its agent did not answer within ${timeoutMs / 1000} s: ${messageOf(err)}`);
        await new Promise((r) => setTimeout(r, 1000));
      }
    }
  }

  /** Each disk as it is now, flat and compressed: a replay starts from exactly these bytes. */
  private async copyDisks(vm: VmRecord, vmDir: string, disksDir: string, dir: string): Promise<RecordingMeta["disks"]> {
    const out: RecordingMeta["disks"] = [];
    // The VM's own directory is <vmsDir>/<uuid>; the recording's is inside it.
    const places = await recordedPlaces(vm, dirname(vmDir), (id) => this.d.vms.recordById(id));
    for (const disk of vm.spec.disks) {
      const top = diskFile(disksDir, disk.name);
      // The chain is followed only where vigil put its layers (the rule start and export use): the top's header
      // must name the backing vigil recorded, and every layer below it a recorded place.
      if (disk.backing) {
        const named = (await imageInfo(top, { format: "qcow2" }))["full-backing-filename"];
        if (named === undefined || realpathSync(named) !== realpathSync(disk.backing)) throw new VigilError("VIGIL_HOST", `Cannot record VM ${q(vm.name)}: disk ${q(disk.name)} names a backing file vigil did not record for it`);
        await backingChain(disk.backing, places);
      }
      const file = join(dir, `disk-${disk.name}.qcow2`);
      await runCommand("qemu-img", ["convert", "-q", "-c", "-f", "qcow2", "-O", "qcow2", top, file], { what: `Copying disk ${disk.name} for the recording` });
      out.push({ name: disk.name, file, sha256: await sha256File(file), bytes: statSync(file).size });
    }
    return out;
  }

  /** Takes the end point when the guest powers off (QEMU pauses), then lets QEMU quit; finishes on exit. */
  private follow(vm: VmRecord, rt: VmRuntime, a: Active): void {
    const off = rt.qmp.onEvent((e) => {
      if (e.event !== "SHUTDOWN") return;
      void (async () => {
        try {
          // The end point is here unless `vm stop` took it already (before pressing the power button).
          a.end ??= await this.endPoint(vm, rt, a, `guest ${typeof e.data.reason === "string" ? e.data.reason : "shutdown"}`);
        } catch (err) {
          this.d.log.warn({ vm: vm.name, err: messageOf(err) }, "Cannot take the recording's end point");
        }
        await rt.qmp.execute("quit").catch(() => undefined);
      })();
    });
    void rt.exited.then(async () => {
      off();
      await this.finish(vm, a).catch((err: unknown) => this.d.log.error({ vm: vm.name, err: messageOf(err) }, "Cannot finish a recording"));
    });
  }

  private async endPoint(vm: VmRecord, rt: VmRuntime, a: Active, reason: string): Promise<NonNullable<RecordingMeta["end"]>> {
    // QEMU is paused (by vigil, or by the guest's power-off under shutdown=pause): wait for it, then give the relay
    // what QEMU already wrote to the socket.
    const deadline = Date.now() + END_POINT_TIMEOUT_MS;
    let status = "";
    while (Date.now() < deadline) {
      status = (await rt.qmp.execute<{ status: string }>("query-status")).status;
      if (status !== "running") break;
      await new Promise((r) => setTimeout(r, 50));
    }
    const icount = await liveIcount(rt);
    const memorySha256 = hashGuestRam(rt.pid, guestRamBytes(vm.spec.memoryMiB, "tcg"));
    await new Promise((r) => setTimeout(r, 300));
    const serialBytes = a.relay.bytes;
    return { icount, memorySha256, serialBytes, serialSha256: a.relay.digestOf(serialBytes), reason };
  }

  private async finish(vm: VmRecord, a: Active): Promise<void> {
    this.active.delete(vm.id);
    this.d.vms.setConsoleRelay(vm.id, undefined);
    a.relay.close();
    a.agentPipe?.close();
    const meta: RecordingMeta = { ...a.rec.meta, ...(a.shadow ? { shadow: await a.shadow.stop() } : {}) };
    let log: RecordingMeta["log"] = null;
    let error: string | null = null;
    try {
      const r = await a.compressor.finish();
      log = { file: join(recordingDir(this.d.vms.layoutOf(vm).dir, a.rec.id), "log.zst"), sha256: r.sha256, storedBytes: r.storedBytes, rawBytes: r.rawBytes, header: r.header };
    } catch (err) {
      error = `the log could not be finished: ${messageOf(err)}`;
    }
    rmSync(a.rawLog, { force: true });
    if (!a.end && !error) error = "QEMU exited without an end point (killed, crashed, or stopped without the guest powering off)";
    const state = a.end && log && !error ? "complete" : "aborted";
    const endedAt = new Date();
    const updated = await this.repo.update(a.rec.id, state, { ...meta, log, end: a.end, endedAt: endedAt.toISOString(), durationMs: endedAt.getTime() - a.startedAt, error });
    for (const f of [log?.file, meta.serialFile, ...meta.disks.map((x) => x.file)]) {
      if (f && existsSync(f)) await this.d.registry.register(vm.id, f, "recording", { hash: false });
    }
    const v = this.view(updated);
    await this.d.audit.append({ actor: SYSTEM_ACTOR.name, action: "recording.finish", target: { kind: "vm", id: vm.id, name: vm.name }, result: state === "complete" ? "ok" : "error", details: { recording: updated.name, state, instructions: v.instructions, storedBytes: v.storedBytes, logKbps: v.logKbps, error } });
  }

  // ---- reads and removal -------------------------------------------------------------------------------------

  private async visibleVmIds(ctx: RequestContext): Promise<string[]> {
    return (await this.d.vms.list(ctx)).map((v) => v.id);
  }

  async list(ctx: RequestContext, vmName?: string): Promise<RecordingView[]> {
    let ids = await this.visibleVmIds(ctx);
    if (vmName !== undefined) {
      const vm = await this.d.vms.lookup(ctx, vmName, "recording.list");
      ids = ids.filter((i) => i === vm.id);
    }
    return (await this.repo.list(ids)).map((r) => this.view(r));
  }

  /** A recording by name, if the actor may read its VM (else: not found, like a VM they may not see). */
  private async find(ctx: RequestContext, name: string, action: string): Promise<{ rec: RecordingRow; vm: VmRecord }> {
    const rec = await this.repo.byName(name);
    const vm = rec ? await this.d.vms.recordById(rec.vmId).catch(() => undefined) : undefined;
    const notFound = new VigilError("VIGIL_NOT_FOUND", `No recording named ${q(name)} (see vigil recording list)`, { field: "recording" });
    // Read like its VM: who may not read the VM is told the recording does not exist (as for a VM's name).
    // A name that does not exist is refused (403) to whoever may read no VM at all, like any other route.
    const op = { action, permission: "vm.read" as const, target: { kind: "recording", name }, owner: vm ? await this.d.vms.ownerOf(vm.id) : undefined, readOnly: true };
    if (!rec || !vm) {
      if ((await this.visibleVmIds(ctx)).length === 0) await this.d.guard.authorize(ctx, op);
      throw notFound;
    }
    await this.d.guard.authorizeOrHide(ctx, op, notFound);
    return { rec, vm };
  }

  async show(ctx: RequestContext, name: string): Promise<RecordingView & { shadow: ShadowStatus | null; files: string[]; end: RecordingMeta["end"]; log: RecordingMeta["log"]; live: { icount: number; rawBytes: number; storedBytes: number; gate: GateStatus | null } | null }> {
    const { rec } = await this.find(ctx, name, "recording.show");
    // While it records: where it is (the instruction count QEMU is at) and how much log it has written.
    const a = this.active.get(rec.vmId);
    const stats = a?.compressor.stats();
    const mine = a && a.rec.id === rec.id ? a : undefined;
    const live = mine && stats ? { icount: await liveIcount(mine.rt), rawBytes: stats.rawBytes, storedBytes: stats.storedBytes, gate: mine.relay.gateStatus() } : null;
    return { ...this.view(rec), shadow: mine?.shadow?.status() ?? rec.meta.shadow ?? null, files: [rec.meta.log?.file, rec.meta.serialFile, ...rec.meta.disks.map((x) => x.file)].filter((f): f is string => !!f), end: rec.meta.end, log: rec.meta.log, live };
  }

  async delete(ctx: RequestContext, name: string): Promise<{ deleted: string; files: number }> {
    const { rec, vm } = await this.find(ctx, name, "recording.delete");
    return this.d.guard.run(ctx, { action: "recording.delete", permission: "vm.delete", target: { kind: "vm", id: vm.id, name: vm.name }, owner: await this.d.vms.ownerOf(vm.id), details: { recording: rec.name } }, async () => {
      if (rec.state === "recording") throw new VigilError("VIGIL_INVALID_STATE", `Recording ${q(rec.name)} is still recording (stop VM ${q(vm.name)} first)`, { field: "recording" });
      let files = 0;
      for (const f of [rec.meta.log?.file, rec.meta.serialFile, ...rec.meta.disks.map((x) => x.file)]) {
        if (!f || !existsSync(f)) continue;
        rmSync(f, { force: true });
        await this.d.registry.markRemoved(vm.id, f, `recording ${rec.name} deleted`);
        files++;
      }
      rmSync(recordingDir(this.d.vms.layoutOf(vm).dir, rec.id), { recursive: true, force: true });
      await this.repo.delete(rec.id);
      return { deleted: rec.name, files };
    });
  }

  /**
   * `vigil recording export R`: one tar — `recording.json` (what the recording is, with every file's sha256; no
   * host paths), the compressed log, the serial transcript and the disks at its start — streamed, with its size.
   */
  async prepareExport(ctx: RequestContext, name: string): Promise<{ totalBytes: number; chunks: () => AsyncGenerator<Buffer> }> {
    const { rec, files } = await this.exportFiles(ctx, name);
    const m = rec.meta;
    const listed = await Promise.all(files.map(async (f) => ({ name: f.name, bytes: statSync(f.path).size, sha256: await sha256File(f.path) })));
    const manifest = Buffer.from(JSON.stringify({ format: 1, kind: "vigil-recording", name: rec.name, vm: m.vm, qemu: m.qemu, spec: m.spec, boot: m.boot, startedAt: m.startedAt, endedAt: m.endedAt, durationMs: m.durationMs, log: m.log && { sha256: m.log.sha256, storedBytes: m.log.storedBytes, rawBytes: m.log.rawBytes, header: m.log.header }, end: m.end, files: listed }, null, 2));
    const entry = (bytes: number) => 512 + bytes + padding(BigInt(bytes)).length;
    const totalBytes = entry(manifest.length) + listed.reduce((n, f) => n + entry(f.bytes), 0) + END.length;
    async function* chunks(): AsyncGenerator<Buffer> {
      yield fileHeader("recording.json", BigInt(manifest.length));
      yield manifest;
      yield padding(BigInt(manifest.length));
      for (const [i, f] of files.entries()) {
        const bytes = listed[i]!.bytes;
        yield fileHeader(f.name, BigInt(bytes));
        let sent = 0;
        for await (const c of createReadStream(f.path, { end: bytes - 1 })) {
          sent += (c as Buffer).length;
          yield c as Buffer;
        }
        if (sent !== bytes) throw new VigilError("VIGIL_HOST", `${q(f.path)} changed size during the export`);
        yield padding(BigInt(bytes));
      }
      yield END;
    }
    return { totalBytes, chunks };
  }

  /** The files of a recording for `export`. */
  private async exportFiles(ctx: RequestContext, name: string): Promise<{ rec: RecordingRow; files: { name: string; path: string }[] }> {
    const { rec, vm } = await this.find(ctx, name, "recording.export");
    return this.d.guard.run(ctx, { action: "recording.export", permission: "vm.export", target: { kind: "vm", id: vm.id, name: vm.name }, owner: await this.d.vms.ownerOf(vm.id), details: { recording: rec.name } }, async () => {
      if (rec.state !== "complete" || !rec.meta.log) throw new VigilError("VIGIL_INVALID_STATE", `Recording ${q(rec.name)} is ${rec.state}: only a complete recording is exported`, { field: "recording" });
      return { rec, files: [{ name: "log.zst", path: rec.meta.log.file }, { name: "serial.out", path: rec.meta.serialFile }, ...rec.meta.disks.map((x) => ({ name: `disk-${x.name}.qcow2`, path: x.file }))] };
    });
  }

  // ---- replay ------------------------------------------------------------------------------------------------

  private replicaDeps() {
    return {
      db: this.d.db,
      replicasDir: this.d.replicasDir,
      expandLog: async (rec: RecordingRow, out: string) => {
        const log = rec.meta.log!;
        await expandLog(log.file, { sha256: log.sha256, rawBytes: log.rawBytes, header: log.header }, out, rec.name);
      },
    };
  }

  /** Checks that this host can replay the recording: the same QEMU build. */
  private async checkReplayable(rec: RecordingRow): Promise<void> {
    if (rec.state !== "complete" || !rec.meta.end || !rec.meta.log) throw new VigilError("VIGIL_INVALID_STATE", `Recording ${q(rec.name)} is ${rec.state}: only a complete recording can be replayed${rec.meta.error ? ` (${rec.meta.error})` : ""}`, { field: "recording" });
    const here = await currentQemuBuild();
    if (here.sha256 !== rec.meta.qemu.sha256) throw new VigilError("VIGIL_INVALID_STATE", `Recording ${q(rec.name)} was made by ${rec.meta.qemu.version} (sha256 ${rec.meta.qemu.sha256.slice(0, 12)}…); this host's QEMU is ${here.version} (sha256 ${here.sha256.slice(0, 12)}…): a log replays only on the build that wrote it`, { field: "recording" });
  }

  /** Where `until` lands: an instruction count, or a percentage of the recording ("50%"). */
  static resolvePoint(until: string | number | undefined, end: number): number {
    if (until === undefined) return end;
    if (typeof until === "number") return until;
    const pct = /^(\d{1,3}(?:\.\d+)?)%$/.exec(until);
    if (pct) {
      const p = Number(pct[1]);
      if (p > 100) throw new VigilError("VIGIL_BAD_REQUEST", "until: a percentage is at most 100%", { field: "until" });
      return Math.round((end * p) / 100);
    }
    if (/^\d{1,16}$/.test(until)) return Number(until);
    throw new VigilError("VIGIL_BAD_REQUEST", `until: ${q(until)} is neither an instruction count nor a percentage such as 50%`, { field: "until" });
  }

  async replay(ctx: RequestContext, name: string, options: { until?: string | number | undefined } = {}): Promise<ReplayResult> {
    const { rec, vm } = await this.find(ctx, name, "recording.replay");
    const end = rec.meta.end;
    return this.d.guard.run(ctx, { action: "recording.replay", permission: "vm.console", target: { kind: "vm", id: vm.id, name: vm.name }, owner: await this.d.vms.ownerOf(vm.id), details: { recording: rec.name, until: options.until ?? null } }, async () => {
      await this.checkReplayable(rec);
      const target = RecordingService.resolvePoint(options.until, end!.icount);
      if (target > end!.icount) throw new VigilError("VIGIL_BAD_REQUEST", `until: the recording ends at instruction ${end!.icount}`, { field: "until" });
      const t0 = performance.now();
      const replica = await Replica.launch(this.replicaDeps(), vm, rec);
      try {
        const reached = await replica.runTo(target, Math.max(REPLAY_MIN_TIMEOUT_MS, 5 * (rec.meta.durationMs ?? 0)));
        const elapsedMs = performance.now() - t0;
        const serial = replica.serial();
        let verified: ReplayResult["verified"] = null;
        if (target === end!.icount) {
          const serialOk = serial.length === end!.serialBytes && createHash("sha256").update(serial).digest("hex") === end!.serialSha256;
          // QEMU 7.2 pauses a replay at the guest's power-off a few instructions before the recording's QEMU paused
          // there, and cannot go on: its RAM is not comparable with the recorded digest (docs/recording.md).
          const shortAtPowerOff = reached < end!.icount && end!.reason.startsWith("guest") && (await replica.atShutdown());
          const memoryOk = shortAtPowerOff ? null : reached === end!.icount && replica.memorySha256() === end!.memorySha256;
          verified = { serial: serialOk, memory: memoryOk, deterministic: serialOk && memoryOk !== false };
        }
        return {
          recording: rec.name, reachedIcount: reached, targetIcount: target, verified, serialBytes: serial.length,
          serialTail: serial.subarray(Math.max(0, serial.length - 2000)).toString("utf8"), elapsedMs: Math.round(elapsedMs),
          speed: target === end!.icount && rec.meta.durationMs ? Math.round((rec.meta.durationMs / elapsedMs) * 100) / 100 : null,
        };
      } finally {
        await replica.close();
      }
    }, (r) => ({ reached: r.reachedIcount, deterministic: r.verified?.deterministic ?? null }));
  }

  /** `vigil recording bisect R --check C`: the first point of the replay where check C reports. */
  async bisect(ctx: RequestContext, name: string, options: { check: string; probes?: number | undefined }): Promise<BisectResult> {
    const { rec, vm } = await this.find(ctx, name, "recording.bisect");
    return this.d.guard.run(ctx, { action: "recording.bisect", permission: "vm.introspect", target: { kind: "vm", id: vm.id, name: vm.name }, owner: await this.d.vms.ownerOf(vm.id), details: { recording: rec.name, check: options.check } }, async () => {
      await this.checkReplayable(rec);
      return bisectCheck({
        recording: rec.name,
        check: options.check,
        probes: options.probes ?? 12,
        end: rec.meta.end!.icount,
        timeoutMs: Math.max(REPLAY_MIN_TIMEOUT_MS, 5 * (rec.meta.durationMs ?? 0)),
        launch: () => Replica.launch(this.replicaDeps(), vm, rec),
      });
    }, (r) => ({ found: r.found, window: r.window }));
  }

  /** The serial transcript of a recording (for `show --serial`). */
  async serial(ctx: RequestContext, name: string): Promise<string> {
    const { rec, vm } = await this.find(ctx, name, "recording.serial");
    await this.d.guard.authorize(ctx, { action: "recording.serial", permission: "vm.console", target: { kind: "vm", id: vm.id, name: vm.name }, owner: await this.d.vms.ownerOf(vm.id), readOnly: true });
    return existsSync(rec.meta.serialFile) ? readFileSync(rec.meta.serialFile, "utf8") : "";
  }
}
