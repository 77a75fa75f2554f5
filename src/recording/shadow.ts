/**
 * The shadow of a recording (docs/recording.md, "Shadow"), after VMware's Aftersight: "dawdle behind the running
 * VM". While the VM records, a replica replays the log as it is written (a `LogFollower` copies it into the
 * replica's FIFO) and the introspection checks run on the replica's RAM at each step — expensive checks never touch
 * the production VM, and the result is at most a few seconds old.
 *
 * The shadow is kept on a leash: it runs (replay-break) only up to what the follower has copied into its log file,
 * less a margin, and waits there for more — a replay that reads to the end of its file stops for good (log-store.ts,
 * `LogFollower`).
 */
import { RollingMedian } from "../util/rolling-median.ts";
import { VigilError, messageOf } from "../errors.ts";
import type { Logger } from "../log.ts";
import type { Baseline, Finding } from "../introspection/sweep.ts";
import { sweepInspector, type ProbeTarget } from "./bisect.ts";
import { LogFollower } from "./log-store.ts";

/**
 * The shadow stays this many instructions behind what the follower has copied. Measured: QEMU 7.2 replays an idle
 * guest's sleep at about the pace it was recorded (an idle tiny guest runs ~0.5 M instructions a second), so the
 * margin and the smallest step are what an idle guest's lag is made of: 10 M + 20 M instructions meant a minute.
 */
export const LEASH_MARGIN = 2_000_000;
/** A step shorter than this waits for more log (each step costs a sweep: tens of ms with the kernel model cached). */
const MIN_STEP = 2_000_000;
/** Findings kept (and audited) per shadow: a guest cannot flood the audit log through it. */
const MAX_FINDINGS = 50;
/** How often the shadow looks for more log, and samples where the live VM is. */
const POLL_MS = 500;
/** Checks the lag's median is taken over (the most recent ones). */
const LAG_WINDOW = 1000;
/** Live samples kept for the lag: the shadow is never further behind than this many samples (10 minutes). */
const MAX_SAMPLES = 1200;
/** A step that takes longer than this has diverged or hung. */
const STEP_TIMEOUT_MS = 5 * 60_000;

export interface ShadowFinding {
  check: string;
  severity: string;
  message: string;
  /** The first instruction count at which the shadow saw it. */
  icount: number;
  at: string;
}

export interface ShadowStatus {
  state: "starting" | "trailing" | "ended" | "failed";
  /** The instruction count up to which the checks have run. */
  checkedIcount: number;
  baselineAt: number | null;
  /** New baselines after the first: the guest rebooted, or the first was taken before its kernel settled. */
  rebaselines: number;
  sweeps: number;
  /** Findings beyond MAX_FINDINGS, counted and not kept. */
  moreFindings: number;
  /** How far behind the live VM the checked point is now, and the median over the run. */
  lagMs: number | null;
  lagMedianMs: number | null;
  findings: ShadowFinding[];
  error: string | null;
}

/** What the shadow needs of a replica (replica.ts), beside a probe target: where it is, and its resets. */
export interface ShadowTarget extends ProbeTarget {
  icount(): Promise<number>;
  onReset(listener: () => void): void;
}

export interface ShadowDeps {
  /** The raw log QEMU is writing. */
  rawLog: string;
  /** Launches the replica on a log file that `follow(path)` makes and keeps appending to. */
  launch: (follow: (logFile: string) => Promise<void>) => Promise<ShadowTarget>;
  /** The live recording's instruction count (query-replay: a pure read). */
  liveIcount: () => Promise<number>;
  /** A finding the shadow saw first (audited by the caller). */
  onFinding: (f: Finding, icount: number) => Promise<void>;
  /** The checks have run up to `icount` (the output gate releases what was written before it). */
  onChecked?: (icount: number) => void;
  /**
   * From which instruction count a baseline may be taken (the live VM's agent answered then: the kernel has
   * booted), or undefined while not known. Without it the first modellable point is used (docs/recording.md).
   */
  baselineFrom?: () => number | undefined;
  log: Logger;
  inspect?: (t: ProbeTarget, baseline: Baseline | undefined) => Promise<{ baseline: Baseline | undefined; findings: Finding[] }>;
}

export class Shadow {
  private follower: LogFollower | undefined;
  private replica: ShadowTarget | undefined;
  private stopped = false;
  private loop: Promise<void> | undefined;
  private readonly samples: { t: number; icount: number }[] = [];
  /** The lag's median over the last checks (a recording may last days: a bounded window, not every check). */
  private readonly lags = new RollingMedian(LAG_WINDOW);
  private readonly seen = new Set<string>();
  private readonly s: ShadowStatus = { state: "starting", checkedIcount: 0, baselineAt: null, rebaselines: 0, sweeps: 0, moreFindings: 0, lagMs: null, lagMedianMs: null, findings: [], error: null };

  private constructor(private readonly d: ShadowDeps) {}

  /** Starts the shadow (the recording must be running: the replica reads its first event while it starts). */
  static start(d: ShadowDeps): Shadow {
    const s = new Shadow(d);
    s.loop = s.run().catch((err: unknown) => {
      if (s.stopped) return; // the replica was closed under a step: the end, not a failure
      s.s.state = "failed";
      s.s.error = messageOf(err);
      d.log.warn({ err: s.s.error }, "The recording's shadow stopped");
    });
    return s;
  }

  /** The raw offset the follower has copied up to: the compressor must not free the raw log beyond it. */
  get rawOffset(): number {
    return this.follower?.rawOffset ?? 0;
  }

  status(): ShadowStatus {
    return { ...this.s, findings: [...this.s.findings] };
  }

  private async run(): Promise<void> {
    const replica = await this.d.launch(async (logFile) => {
      const follower = await LogFollower.start(this.d.rawLog, logFile, { pollMs: 50 });
      this.follower = follower;
      // QEMU reads the first events while it starts, before it takes a break: they must be in the file.
      await follower.whenCopied(BigInt(2 * LEASH_MARGIN));
    });
    this.replica = replica;
    if (this.stopped) {
      await replica.close();
      return;
    }
    this.s.state = "trailing";
    const inspect = this.d.inspect ?? sweepInspector();
    let baseline: Baseline | undefined;
    // The first baseline may be taken while the kernel still boots; a reset starts another boot. In both cases a
    // "not the kernel of the baseline" finding means: take a new one. Otherwise it is a finding like any other.
    let provisional = false;
    let reset = false;
    replica.onReset(() => (reset = true));
    while (!this.stopped) {
      await this.sample();
      const copied = Number(this.follower!.stats().icount) - LEASH_MARGIN;
      if (copied - this.s.checkedIcount < MIN_STEP) {
        await new Promise((r) => setTimeout(r, POLL_MS));
        continue;
      }
      const t0 = Date.now();
      const at = await replica.runTo(copied, STEP_TIMEOUT_MS);
      const from = this.d.baselineFrom?.();
      if (!baseline && this.d.baselineFrom && (from === undefined || at < from)) {
        // The guest is still booting: nothing to compare with yet.
        this.advance(at);
        continue;
      }
      if (this.stopped) break;
      const t1 = Date.now();
      let r;
      try {
        r = await inspect(replica, baseline);
        this.d.log.debug({ from: this.s.checkedIcount, to: at, replayMs: t1 - t0, checkMs: Date.now() - t1 }, "shadow step");
      } catch (err) {
        // Early in a boot there is no kernel to model: the next step tries again. Later it is a failure.
        if (!baseline || reset) {
          this.advance(at);
          continue;
        }
        throw new VigilError("VIGIL_INTROSPECTION", `The checks failed on the shadow at instruction ${at}: ${messageOf(err)}`);
      }
      const mismatch = r.findings.some((f) => f.check === "baseline-mismatch");
      if (baseline && mismatch && (provisional || reset)) {
        baseline = (await inspect(replica, undefined)).baseline;
        this.s.baselineAt = at;
        this.s.rebaselines++;
        provisional = reset = false;
      } else if (!baseline) {
        baseline = r.baseline;
        this.s.baselineAt = at;
        provisional = true;
      } else {
        provisional = false;
        this.s.sweeps++;
        for (const f of r.findings) {
          if (f.severity === "info") continue;
          const key = `${f.check}\0${f.message}`;
          if (this.seen.has(key)) continue;
          if (this.seen.size >= MAX_FINDINGS) {
            this.s.moreFindings++;
            continue;
          }
          this.seen.add(key);
          this.s.findings.push({ check: f.check, severity: f.severity, message: f.message, icount: at, at: new Date().toISOString() });
          await this.d.onFinding(f, at).catch((err: unknown) => this.d.log.error({ err: messageOf(err) }, "Cannot report a shadow finding"));
        }
      }
      this.advance(at);
    }
  }

  /** Where the live VM is now, for the lag. */
  private async sample(): Promise<void> {
    const icount = await this.d.liveIcount().catch(() => undefined);
    if (icount === undefined) return;
    this.samples.push({ t: Date.now(), icount });
    if (this.samples.length > MAX_SAMPLES) this.samples.shift();
  }

  /** The checks have run up to `at`: the lag is how long ago the live VM was there. */
  private advance(at: number): void {
    this.s.checkedIcount = at;
    const passed = this.samples.find((x) => x.icount >= at);
    if (passed) {
      this.s.lagMs = Date.now() - passed.t;
      this.lags.add(this.s.lagMs);
      this.s.lagMedianMs = this.lags.median;
    }
    this.d.onChecked?.(at);
  }

  /** Stops the shadow (the recording ended): the replica and the follower go. */
  async stop(): Promise<ShadowStatus> {
    this.stopped = true;
    await this.replica?.close().catch(() => undefined);
    await this.follower?.close().catch(() => undefined);
    await this.loop;
    if (this.s.state !== "failed") this.s.state = "ended";
    return this.status();
  }
}
