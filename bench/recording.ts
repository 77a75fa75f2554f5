/**
 * Record/replay benchmark (issue 14, docs/recording.md), a 128 MiB / 1 vCPU tiny guest under TCG.
 *
 * Each round runs the same VM twice, in alternating order: plainly (`vm start --wait`: TCG without -icount, the
 * baseline) and recorded (`POST /v1/vms/{name}/record`, what `vm start --record --wait` sends). In both, one
 * fixed CPU-bound workload is typed on the serial console between two markers the shell computes, so its wall
 * time is taken on the host from the console stream (not from the agent, whose requests are paced to ~50 bytes/s
 * under record), with the CPU time of QEMU (and of the daemon and its zstd) over the same window.
 * The recorded run also has an idle window after boot and a busy one (disk writes and reads through blkreplay,
 * serial output), then is stopped and replayed.
 *
 * Bit rates: a window's raw bytes are the growth of QEMU's raw log file (run/rr.log) across it. Its compressed
 * bytes are not read live — zstd emits a block only per 128 KiB of input, a long stretch of idle time — but
 * afterwards: the finished log is decompressed and the window's byte range compressed alone at vigil's level
 * (`zstd -3`). Ratios: record/baseline of the workload's wall time and of QEMU's CPU time (goal ≤ 1.15);
 * replay speed = recorded duration / replay wall time (goal ≥ 1); idle compressed bit rate (goal ≤ 56 kbit/s).
 *
 *   npm run bench -- recording [rounds=3] [idleSeconds=20] [cpuMiB=128] [--no-replay] [--no-busy] [--no-icount]
 */
import { spawn, spawnSync } from "node:child_process";
import { closeSync, mkdtempSync, openSync, readFileSync, readSync, readdirSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Socket } from "node:net";
import { upgrade } from "../src/cli/client.ts";
import { benchDaemon, machineLine, median, report, type BenchDaemon } from "./lib.ts";

const VM = "rr";
const TICK_MS = 1000 / 100; // USER_HZ: /proc/PID/stat counts clock ticks of 10 ms
const ZSTD_LEVEL = 3; // what the recorder's LogCompressor uses

type Shown = { name: string; state: string; error: string | null; durationMs: number | null; rawBytes: number | null; storedBytes: number | null; logKbps: number | null; rawKbps: number | null; instructions: number | null; log: { file: string; header: string } | null };
type Replay = { reachedIcount: number; targetIcount: number; verified: { serial: boolean; memory: boolean | null; deterministic: boolean } | null; elapsedMs: number; speed: number | null };

/** utime + stime of a process (all its threads), in ms; 0 once it is gone. */
function cpuMs(pid: number | undefined): number {
  if (pid === undefined) return 0;
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return (Number(f[11]) + Number(f[12])) * TICK_MS;
  } catch {
    return 0;
  }
}

function ppidOf(pid: number): number | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
  } catch {
    return undefined;
  }
}

/** The benchmark daemon's pid and its zstd children (the log compressor while recording), found through /proc. */
function daemonProcesses(home: string): { daemon: number | undefined; zstd: number[] } {
  let daemon: number | undefined;
  const zstd: number[] = [];
  for (const e of readdirSync("/proc")) {
    if (!/^\d+$/.test(e)) continue;
    const pid = Number(e);
    try {
      const cmd = readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0");
      if (cmd.includes("serve") && readFileSync(`/proc/${pid}/environ`, "utf8").split("\0").includes(`VIGIL_HOME=${home}`)) daemon = pid;
      else if (cmd[0]?.endsWith("zstd")) zstd.push(pid);
    } catch {
      /* gone */
    }
  }
  return { daemon, zstd: zstd.filter((p) => daemon !== undefined && ppidOf(p) === daemon) };
}

/** The VM's directory in the benchmark home (one VM) and its QEMU's host pid and argv. */
function qemuOf(home: string): { dir: string; pid: number; argv: string[] } {
  const [id] = readdirSync(join(home, "vms"));
  const dir = join(home, "vms", id!);
  const pid = Number(readFileSync(join(dir, "jail.pid"), "utf8"));
  return { dir, pid, argv: readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0") };
}

/** What makes a run plain TCG or a recording, from QEMU's own argv. */
function accelOf(argv: string[]): string {
  const val = (flag: string) => argv[argv.indexOf(flag) + 1];
  const accel = argv.includes("-accel") ? val("-accel") : (/accel=([^,]+)/.exec(val("-machine") ?? "") ?? [])[1];
  return `-accel ${accel ?? "?"}, ${argv.includes("-icount") ? `-icount ${val("-icount")}` : "no -icount"}`;
}

/**
 * The serial console of the running VM (through the recorder's relay when recording). Commands are typed like a
 * user would; the markers that bound a workload are computed by the shell (`echo RRA$((…))`), so the echo of the
 * typed line never matches them.
 */
class Console {
  private text = "";
  private waiters: Array<() => void> = [];
  private constructor(private readonly socket: Socket) {
    socket.on("error", () => undefined); // the console closes with the VM
    socket.on("data", (b: Buffer) => {
      this.text += b.toString("latin1");
      for (const w of this.waiters.splice(0)) w();
    });
  }
  static async open(d: BenchDaemon): Promise<Console> {
    return new Console(await upgrade(`/v1/vms/${VM}/console`, { socketPath: join(d.home, "run", "vigil.sock") }));
  }
  /** performance.now() when `needle` first appears after `from`, or undefined after `timeoutMs`. */
  async seen(needle: string, from: number, timeoutMs: number): Promise<number | undefined> {
    const deadline = performance.now() + timeoutMs;
    while (!this.text.includes(needle, from)) {
      const left = deadline - performance.now();
      if (left <= 0) return undefined;
      await new Promise<void>((r) => {
        const t = setTimeout(r, left);
        this.waiters.push(() => (clearTimeout(t), r()));
      });
    }
    return performance.now();
  }
  /**
   * Types `body` between a start and an end marker; resolves with the host's clock at each marker, sampling
   * `probe` (CPU times, log size) at the same moments. Retyped once if the shell has not started it in 30 s.
   */
  async run<T>(body: string, probe: () => T, timeoutMs: number): Promise<{ ms: number; at: [T, T] }> {
    const tag = Math.floor(Math.random() * 1e6);
    const from = this.text.length;
    let a: number | undefined;
    let pa: T | undefined;
    for (let attempt = 0; attempt < 2 && a === undefined; attempt++) {
      this.socket.write(`echo RRA$((${tag}+1)); ${body}; echo RRB$((${tag}+2))\n`);
      a = await this.seen(`RRA${tag + 1}`, from, 30_000);
      pa = probe();
    }
    if (a === undefined) throw new Error(`the guest's shell did not start the workload; console tail: ${this.text.slice(-300)}`);
    const b = await this.seen(`RRB${tag + 2}`, from, timeoutMs);
    const pb = probe();
    if (b === undefined) throw new Error(`the workload did not finish in ${timeoutMs} ms; console tail: ${this.text.slice(-300)}`);
    return { ms: b - a, at: [pa!, pb] };
  }
  close(): void {
    this.socket.destroy();
  }
}

/** The CPU-bound workload: md5 of `mib` MiB of zeros through a pipe (userland hashing, pipe copies, syscalls). */
const cpuWorkload = (mib: number) => `dd if=/dev/zero bs=64k count=${mib * 16} 2>/dev/null | md5sum`;
/**
 * The busy workload: 8 MiB of random data written to /data (virtio-blk through blkreplay) and synced, the page
 * cache dropped, the file read back and hashed, then 8 KiB of random bytes in hex on the console (~25 KB of
 * serial output).
 */
const BUSY = "dd if=/dev/urandom of=/data/rr-bench bs=64k count=128 conv=fsync 2>/dev/null; echo 3 > /proc/sys/vm/drop_caches; md5sum /data/rr-bench; od -An -tx1 -N 8192 /dev/urandom; rm /data/rr-bench; sync";

interface Sample {
  t: number;
  qemu: number;
  host: number; // daemon + its zstd children
  logBytes: number; // the raw log file's size
  icount?: number | undefined; // the recording's live instruction count (`vigil recording show`), where a divergence is placed
}

function sampler(home: string, qemuPid: number, rawLog: string | undefined): () => Sample {
  const procs = daemonProcesses(home);
  return () => ({
    t: performance.now(),
    qemu: cpuMs(qemuPid),
    host: cpuMs(procs.daemon) + procs.zstd.reduce((s, p) => s + cpuMs(p), 0),
    logBytes: rawLog ? statSync(rawLog).size : 0,
  });
}

/** When a process started, on performance.now()'s clock (10 ms resolution: /proc counts clock ticks). */
function startedAt(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const startTicks = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[19]);
  const uptimeMs = Number(readFileSync("/proc/uptime", "utf8").split(" ")[0]) * 1000;
  return performance.now() - (uptimeMs - startTicks * TICK_MS);
}

type ReplayOutcome = { speed: number | null; elapsedMs: number; reached: number | null; deterministic: boolean | null; replicaCpuMs: number; error?: string };

/** `vigil recording replay R [--until N]`, with the replica's QEMU log kept for a failure's report. */
async function replayOnce(d: BenchDaemon, rec: string, until: number | undefined): Promise<ReplayOutcome> {
  // The replica's directory goes when the replay ends, so its QEMU log is copied while it runs: when a
  // replay fails, QEMU's own words are what tells a divergence from a crash.
  // Its CPU time too, last seen before it went: a replay slower than real time that is busy the whole time is
  // emulation-bound; one that mostly sleeps waits for something.
  let qemuLog = "";
  let replicaCpu = 0;
  const watch = setInterval(() => {
    for (const id of readdirSafe(join(d.home, "rp"))) {
      try {
        replicaCpu = cpuMs(Number(readFileSync(join(d.home, "rp", id, "jail.pid"), "utf8"))) || replicaCpu;
        qemuLog = readFileSync(join(d.home, "rp", id, "run", "qemu.log"), "utf8") || qemuLog;
      } catch {
        /* not there yet, or gone */
      }
    }
  }, 250);
  const t0 = performance.now();
  try {
    const r = await d.api<Replay>("POST", `/v1/recordings/${rec}/replay`, until === undefined ? {} : { until });
    return { speed: r.speed, elapsedMs: r.elapsedMs, reached: r.reachedIcount, deterministic: r.verified?.deterministic ?? null, replicaCpuMs: replicaCpu };
  } catch (err) {
    const tail = qemuLog.trim().split("\n").slice(-3).join(" | ");
    return { speed: null, elapsedMs: performance.now() - t0, reached: null, deterministic: false, replicaCpuMs: replicaCpu, error: `${(err as Error).message} [replica's qemu.log: ${tail || "empty"}]` };
  } finally {
    clearInterval(watch);
  }
}

async function waitFinished(d: BenchDaemon, rec: string): Promise<Shown> {
  const deadline = Date.now() + 180_000;
  for (;;) {
    const r = await d.api<Shown>("GET", `/v1/recordings/${rec}`);
    if (r.state !== "recording") return r;
    if (Date.now() > deadline) throw new Error(`recording ${rec} did not finish`);
    await new Promise((res) => setTimeout(res, 500));
  }
}

/** Bytes of `zstd -LEVEL` of [from, to) of `file`, compressed on its own. */
function compressedSize(file: string, from: number, to: number): number {
  const fd = openSync(file, "r");
  try {
    const buf = Buffer.alloc(Math.max(0, to - from));
    readSync(fd, buf, 0, buf.length, from);
    const r = spawnSync("zstd", ["-q", `-${ZSTD_LEVEL}`, "-c"], { input: buf, maxBuffer: 1 << 30 });
    if (r.status !== 0) throw new Error(`zstd failed: ${r.stderr.toString()}`);
    return r.stdout.length;
  } finally {
    closeSync(fd);
  }
}

function readdirSafe(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch {
    return [];
  }
}

/** Decompresses a stored log's body (QEMU's log from offset 12) into a file. */
async function expandBody(stored: string, out: string): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    const z = spawn("zstd", ["-q", "-d", "-f", "-o", out, stored], { stdio: ["ignore", "ignore", "pipe"] });
    let err = "";
    z.stderr.on("data", (b: Buffer) => (err += b.toString()));
    z.on("close", (code) => (code === 0 ? resolve() : reject(new Error(`zstd -d ${stored}: ${err}`))));
  });
}

const kbps = (bytes: number, ms: number) => (bytes * 8) / ms; // bits per ms = kbit/s

interface RecordedRound {
  workload: { ms: number; qemu: number; host: number };
  bootMs: number;
  boot: { raw: number; stored: number };
  idle: { ms: number; raw: number; stored: number; qemu: number };
  busy: { ms: number; raw: number; stored: number };
  cpu: { ms: number; raw: number; stored: number };
  whole: { durationMs: number; rawKbps: number; storedKbps: number; instructions: number };
  replay: ReplayOutcome | undefined;
  /** Only when the whole replay failed: a replay to the end of the CPU workload. */
  partial: (ReplayOutcome & { until: number }) | undefined;
  /** Instruction counts: after the idle window, after the CPU workload, after the busy one. */
  icounts: [number | undefined, number | undefined, number | undefined, number | undefined];
  accel: string;
}

async function plainRound(d: BenchDaemon, cpuMiB: number, idleSeconds: number): Promise<{ ms: number; qemu: number; host: number; bootMs: number; idleQemu: number; accel: string }> {
  const t0 = performance.now();
  await d.api("POST", `/v1/vms/${VM}/start`, { wait: true, waitTimeoutSec: 300 });
  const bootMs = performance.now() - t0;
  const q = qemuOf(d.home);
  const sample = sampler(d.home, q.pid, undefined);
  const con = await Console.open(d);
  try {
    // The same idle window as the recorded run, so both run the workload equally long after boot (the daemon's
    // introspection baseline, taken a second after the agent's first answer, is over by then in both).
    const i0 = sample();
    await new Promise((r) => setTimeout(r, idleSeconds * 1000));
    const idleQemu = sample().qemu - i0.qemu;
    const w = await con.run(cpuWorkload(cpuMiB), sample, 600_000);
    return { ms: w.ms, qemu: w.at[1].qemu - w.at[0].qemu, host: w.at[1].host - w.at[0].host, bootMs, idleQemu, accel: accelOf(q.argv) };
  } finally {
    con.close();
    await d.api("POST", `/v1/vms/${VM}/stop`, { timeoutSec: 120 });
  }
}

async function recordedRound(d: BenchDaemon, cpuMiB: number, idleSeconds: number, replay: boolean, withBusy: boolean, sampleIcount: boolean, scratch: string): Promise<RecordedRound> {
  const t0 = performance.now();
  const started = await d.api<{ recording: { name: string } }>("POST", `/v1/vms/${VM}/record`, { wait: true, waitTimeoutMs: 300_000 });
  const bootMs = performance.now() - t0;
  const rec = started.recording.name;
  const q = qemuOf(d.home);
  const qemuStartedAt = startedAt(q.pid);
  const sample = sampler(d.home, q.pid, join(q.dir, "run", "rr.log"));
  const con = await Console.open(d);
  // The live instruction count at each window's edges: `recording show` asks QEMU (query-replay) as a user would.
  // --no-icount leaves them out, so no QMP from the benchmark reaches the recording QEMU: whether those queries make
  // its replays fail can then be told apart.
  const icount = async () => (sampleIcount ? (await d.api<{ live: { icount: number } | null }>("GET", `/v1/recordings/${rec}`)).live?.icount : undefined);
  const sampleAt = async (): Promise<Sample> => ({ ...sample(), icount: await icount() });
  let idle: [Sample, Sample];
  let w: { ms: number; at: [Sample, Sample] };
  let busy: { ms: number; at: [Sample, Sample] };
  try {
    // The idle window: the agent has answered (the boot is over); nothing is typed or asked for idleSeconds.
    const i0 = await sampleAt();
    await new Promise((r) => setTimeout(r, idleSeconds * 1000));
    idle = [i0, await sampleAt()];
    w = await con.run(cpuWorkload(cpuMiB), sample, 600_000);
    w.at[1].icount = await icount();
    // Without it (--no-busy) the busy figures are of an empty window: a way to tell whether a replay's divergence
    // comes with the disk and console traffic.
    busy = withBusy ? await con.run(BUSY, sample, 600_000) : { ms: 0, at: [sample(), sample()] };
    busy.at[1].icount = await icount();
  } finally {
    con.close();
    await d.api("POST", `/v1/vms/${VM}/stop`, { timeoutSec: 120 });
  }
  const shown = await waitFinished(d, rec);
  if (shown.state !== "complete" || !shown.log) throw new Error(`recording ${rec} is ${shown.state}: ${shown.error ?? ""}`);

  // Raw offsets into the log body are file sizes minus QEMU's 12-byte header, which it writes only at exit.
  const body = join(scratch, `${rec}.body`);
  await expandBody(shown.log.file, body);
  const off = (s: Sample) => Math.max(0, s.logBytes - 12);
  const seg = (a: Sample, b: Sample) => ({ ms: b.t - a.t, raw: off(b) - off(a), stored: compressedSize(body, off(a), off(b)) });
  const boot = { raw: off(idle[0]), stored: compressedSize(body, 0, off(idle[0])) };
  const idleSeg = seg(idle[0], idle[1]);
  const busySeg = seg(busy.at[0], busy.at[1]);
  const cpuSeg = seg(w.at[0], w.at[1]);
  rmSync(body, { force: true });

  let rp: RecordedRound["replay"];
  let partial: RecordedRound["partial"];
  if (replay) {
    rp = await replayOnce(d, rec, undefined);
    // A replay that fails says nothing about speed; one to the end of the CPU workload (before the busy window)
    // still does, and tells whether the failure lies in the busy window. Its recorded time is the host's clock
    // from QEMU's start (its /proc start time) to that point.
    const cpuEnd = w.at[1].icount;
    if (rp.error && cpuEnd !== undefined) {
      const p = await replayOnce(d, rec, cpuEnd);
      partial = { ...p, until: cpuEnd, speed: p.error ? null : (w.at[1].t - qemuStartedAt) / p.elapsedMs };
    }
  }
  return {
    workload: { ms: w.ms, qemu: w.at[1].qemu - w.at[0].qemu, host: w.at[1].host - w.at[0].host },
    bootMs,
    boot,
    idle: { ...idleSeg, qemu: idle[1].qemu - idle[0].qemu },
    busy: busySeg,
    cpu: cpuSeg,
    whole: { durationMs: shown.durationMs ?? NaN, rawKbps: shown.rawKbps ?? NaN, storedKbps: shown.logKbps ?? NaN, instructions: shown.instructions ?? NaN },
    replay: rp,
    partial,
    icounts: [idle[0].icount, idle[1].icount, w.at[1].icount, busy.at[1].icount],
    accel: accelOf(q.argv),
  };
}

export async function run(args: string[]): Promise<void> {
  const positional = args.filter((a) => !a.startsWith("--"));
  const rounds = Number(positional[0] ?? 3);
  const idleSeconds = Number(positional[1] ?? 20);
  const cpuMiB = Number(positional[2] ?? 128);
  const replay = !args.includes("--no-replay");
  const withBusy = !args.includes("--no-busy");
  const sampleIcount = !args.includes("--no-icount");
  const scratch = mkdtempSync(join(tmpdir(), "vigil-bench-rr-"));
  const d = await benchDaemon();
  try {
    const host = await d.api<{ accelerator: string }>("GET", "/v1/host");
    const load = readFileSync("/proc/loadavg", "utf8").split(" ").slice(0, 3).join(" ");
    const qemus = spawnSync("pgrep", ["-c", "qemu-system"], { encoding: "utf8" }).stdout.trim();
    process.stdout.write(`recording benchmark, ${rounds} rounds, idle ${idleSeconds} s, CPU workload md5 of ${cpuMiB} MiB; ${machineLine(host.accelerator)}\n`);
    process.stdout.write(`load average at start ${load}; other qemu-system processes: ${qemus || "0"}\n`);
    await d.api("POST", "/v1/vms", { name: VM, memoryMiB: 128, vcpus: 1 });

    const plain: Awaited<ReturnType<typeof plainRound>>[] = [];
    const recorded: RecordedRound[] = [];
    for (let i = 0; i < rounds; i++) {
      // Alternate which arm goes first, so drift on a shared machine lands on both.
      const order = i % 2 === 0 ? ["plain", "record"] : ["record", "plain"];
      for (const arm of order) {
        if (arm === "plain") {
          const p = await plainRound(d, cpuMiB, idleSeconds);
          plain.push(p);
          process.stdout.write(`  round ${i + 1} plain:  boot ${p.bootMs.toFixed(0)} ms; workload ${p.ms.toFixed(0)} ms wall, QEMU ${p.qemu.toFixed(0)} ms CPU, daemon+zstd ${p.host.toFixed(0)} ms  [${p.accel}]\n`);
        } else {
          const r = await recordedRound(d, cpuMiB, idleSeconds, replay, withBusy, sampleIcount, scratch);
          recorded.push(r);
          const rp = r.replay ? (r.replay.error ? `replay FAILED after ${r.replay.elapsedMs.toFixed(0)} ms (replica QEMU CPU ${r.replay.replicaCpuMs.toFixed(0)} ms): ${r.replay.error}` : `replay ${r.replay.elapsedMs} ms (replica QEMU CPU ${r.replay.replicaCpuMs.toFixed(0)} ms), ${r.replay.speed ?? "-"}× real time, deterministic ${String(r.replay.deterministic)}`) : "no replay";
          const pp = r.partial ? `; replay to the CPU workload's end (${r.partial.until}): ${r.partial.error ? `FAILED after ${r.partial.elapsedMs.toFixed(0)} ms: ${r.partial.error}` : `reached ${r.partial.reached} in ${r.partial.elapsedMs} ms (replica QEMU CPU ${r.partial.replicaCpuMs.toFixed(0)} ms), ${r.partial.speed!.toFixed(2)}× real time`}` : "";
          process.stdout.write(`  round ${i + 1} record: boot ${r.bootMs.toFixed(0)} ms; workload ${r.workload.ms.toFixed(0)} ms wall, QEMU ${r.workload.qemu.toFixed(0)} ms CPU, daemon+zstd ${r.workload.host.toFixed(0)} ms, log ${kbps(r.cpu.raw, r.cpu.ms).toFixed(0)} / ${kbps(r.cpu.stored, r.cpu.ms).toFixed(0)} kbit/s raw/zstd; idle ${kbps(r.idle.raw, r.idle.ms).toFixed(1)} / ${kbps(r.idle.stored, r.idle.ms).toFixed(1)} kbit/s raw/zstd; ${withBusy ? `busy ${kbps(r.busy.raw, r.busy.ms).toFixed(0)} / ${kbps(r.busy.stored, r.busy.ms).toFixed(0)} kbit/s over ${r.busy.ms.toFixed(0)} ms; ` : ""} icount at boot/idle/cpu/busy end ${r.icounts.map((x) => x ?? "?").join("/")}; whole ${(r.whole.durationMs / 1000).toFixed(1)} s, ${r.whole.rawKbps} / ${r.whole.storedKbps} kbit/s, ${r.whole.instructions} insns; ${rp}${pp}  [${r.accel}]\n`);
        }
      }
    }

    const col = <T>(xs: T[], f: (x: T) => number) => xs.map(f);
    const plainTotal = col(plain, (p) => p.qemu + p.host);
    const recTotal = col(recorded, (r) => r.workload.qemu + r.workload.host);
    report("CPU workload, wall time (console markers)", "ms", { label: "plain TCG, no -icount", values: col(plain, (p) => p.ms) }, { label: "recording (-icount shift=auto,rr=record)", values: col(recorded, (r) => r.workload.ms) }, "≤ 1.15");
    report("CPU workload, QEMU CPU time", "ms", { label: "plain TCG, no -icount", values: col(plain, (p) => p.qemu) }, { label: "recording", values: col(recorded, (r) => r.workload.qemu) }, "≤ 1.15");
    report("CPU workload, QEMU + daemon + zstd CPU time", "ms", { label: "plain TCG, no -icount", values: plainTotal }, { label: "recording", values: recTotal });
    report("idle guest, QEMU CPU time per second", "ms", { label: "plain TCG, no -icount", values: col(plain, (p) => p.idleQemu / idleSeconds) }, { label: "recording", values: col(recorded, (r) => r.idle.qemu / (r.idle.ms / 1000)) });
    report("boot to the agent's first answer", "ms", { label: "vm start --wait", values: col(plain, (p) => p.bootMs) }, { label: "vm start --record --wait", values: col(recorded, (r) => r.bootMs) });

    const line = (label: string, xs: number[], unit: string, goal = "") => process.stdout.write(`  ${label.padEnd(44)} median ${median(xs).toFixed(1)} ${unit}  (n=${xs.length}: ${xs.map((x) => x.toFixed(1)).join(", ")})${goal}\n`);
    process.stdout.write("\n## log bit rate (raw = QEMU's log; zstd = the window's bytes compressed alone at -3)\n");
    line("boot (start to the agent's answer), raw", col(recorded, (r) => kbps(r.boot.raw, r.bootMs)), "kbit/s");
    line("boot, zstd", col(recorded, (r) => kbps(r.boot.stored, r.bootMs)), "kbit/s");
    line("boot, raw MiB", col(recorded, (r) => r.boot.raw / 1048576), "MiB");
    line(`idle (${idleSeconds} s after boot), raw`, col(recorded, (r) => kbps(r.idle.raw, r.idle.ms)), "kbit/s");
    line("idle, zstd", col(recorded, (r) => kbps(r.idle.stored, r.idle.ms)), "kbit/s", "   (goal: ≤ 56)");
    if (withBusy) line("busy (disk + console), raw", col(recorded, (r) => kbps(r.busy.raw, r.busy.ms)), "kbit/s");
    if (withBusy) line("busy, zstd", col(recorded, (r) => kbps(r.busy.stored, r.busy.ms)), "kbit/s");
    line("CPU workload window, raw", col(recorded, (r) => kbps(r.cpu.raw, r.cpu.ms)), "kbit/s");
    line("CPU workload window, zstd", col(recorded, (r) => kbps(r.cpu.stored, r.cpu.ms)), "kbit/s");
    if (withBusy) line("busy window", col(recorded, (r) => r.busy.ms / 1000), "s");
    line("whole recording, raw (vigil recording show)", col(recorded, (r) => r.whole.rawKbps), "kbit/s");
    line("whole recording, stored (vigil recording show)", col(recorded, (r) => r.whole.storedKbps), "kbit/s");
    if (replay) {
      process.stdout.write("\n## replay (vigil recording replay: launch, log expansion, replay to the end point, checks)\n");
      const ok = recorded.filter((r) => r.replay && r.replay.speed !== null);
      line("replay speed (recorded duration / replay wall)", col(ok, (r) => r.replay!.speed!), "×", `   (goal: ≥ 1; ${recorded.length - ok.length} of ${recorded.length} replays failed or diverged)`);
      const part = recorded.filter((r) => r.partial?.speed != null);
      if (part.length) line("…of the failed: replay to the CPU workload's end", col(part, (r) => r.partial!.speed!), "×", `   (${recorded.filter((r) => r.partial).length - part.length} of these failed too)`);
      line("recorded duration", col(recorded, (r) => r.whole.durationMs / 1000), "s");
    }
  } finally {
    await d.close();
    rmSync(scratch, { recursive: true, force: true });
  }
}
