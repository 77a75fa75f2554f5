/**
 * How far behind a dormant VM's scan is, and the periodic rescans that catch it up (issue 13 item 6;
 * docs/transience.md "Scheduling"). One rule decides both what the stale-fleet report shows and what the scheduler
 * rescans (`behind`): a scan is behind when the advisory data or the rules changed since it, the VM ran after it
 * (its disk changed), or it is older than the VM's policy allows.
 *
 * The scheduler rescans only dormant VMs (stopped or crashed, templates included) that were scanned before:
 * a VM never scanned has not been put under posture management, and scanning every VM of a host unasked would be
 * a surprise of minutes per VM (it is listed as `unknown` by the report and `vigil scan VM` scans it). It runs one
 * scan at a time, as the system (each scan audited like `vigil scan`), at most `maxPerRun` per run, the most behind
 * first; a VM that starts meanwhile is skipped (the scan refuses a running VM), and a failure is logged and left
 * for the next run. It looks every `checkMs` whether the advisory data or rules changed — a change rescans at once
 * — and otherwise runs every `periodMs`.
 */
import type { Logger } from "../log.ts";
import type { VmRecord } from "../vm/vm-repository.ts";
import type { GatePolicy, PostureRow } from "./posture-repository.ts";
import { SEVERITIES, type Severity } from "./posture-state.ts";

export interface Current {
  advisoriesSha256?: string;
  rulesSha256?: string;
}

export interface Behind {
  scannedAt: string | null;
  /** Whole days since the scan (null: never scanned). */
  ageDays: number | null;
  /** The advisory data / rules the scan used are not the current ones (null: not known now or never scanned). */
  advisoriesChanged: boolean | null;
  rulesChanged: boolean | null;
  /** The VM ran after the scan: its disk is not what was scanned. */
  ranSince: boolean;
  /** Older than the policy's maxScanAgeDays. */
  overdue: boolean;
  pending: number;
  worstSeverity: Severity | null;
  findings: number;
  /** Whether a rescan would tell something new: any of the above. */
  behind: boolean;
}

const DAY_MS = 86_400_000;

export function behindOf(row: PostureRow | undefined, cur: Current, policy: Pick<GatePolicy, "maxScanAgeDays">, now: Date): Behind {
  const s = row?.scan ?? null;
  if (!s) return { scannedAt: null, ageDays: null, advisoriesChanged: null, rulesChanged: null, ranSince: false, overdue: false, pending: 0, worstSeverity: null, findings: 0, behind: false };
  const ageMs = now.getTime() - Date.parse(s.scannedAt);
  const advisoriesChanged = cur.advisoriesSha256 === undefined ? null : cur.advisoriesSha256 !== s.advisoriesSha256;
  const rulesChanged = cur.rulesSha256 === undefined ? null : cur.rulesSha256 !== s.rulesSha256;
  // An in-band scan is taken while the VM runs: running up to it is what it scanned.
  const ranSince = row?.lastRunningAt != null && Date.parse(row.lastRunningAt) > Date.parse(s.scannedAt) && s.how === "offline";
  const overdue = !(ageMs <= policy.maxScanAgeDays * DAY_MS);
  const worst = s.pending.reduce<Severity | null>((w, p) => (w === null || SEVERITIES.indexOf(p.severity) > SEVERITIES.indexOf(w) ? p.severity : w), null);
  return {
    scannedAt: s.scannedAt,
    ageDays: Number.isFinite(ageMs) ? Math.floor(Math.max(0, ageMs) / DAY_MS) : null,
    advisoriesChanged,
    rulesChanged,
    ranSince,
    overdue,
    pending: s.pending.length,
    worstSeverity: worst,
    findings: s.findings.length,
    behind: advisoriesChanged === true || rulesChanged === true || ranSince || overdue,
  };
}

export const isDormant = (vm: Pick<VmRecord, "state">): boolean => vm.state === "stopped" || vm.state === "crashed";

export interface RescanDeps {
  /** Every VM of this host (the scheduler acts for the system, not for a user). */
  all(): Promise<readonly Pick<VmRecord, "id" | "name" | "labels" | "state">[]>;
  rows(): Promise<PostureRow[]>;
  /** Whether any VM here was ever scanned: the minute's check asks only this (the rows hold whole package lists). */
  anyScanned(): Promise<boolean>;
  policyOf(vm: Pick<VmRecord, "name" | "labels">): Promise<GatePolicy>;
  current(): Promise<Current>;
  /** `vigil scan VM` as the system. */
  scan(name: string): Promise<unknown>;
  log: Logger;
  now?: () => Date;
}

export interface RescanOptions {
  checkMs?: number;
  periodMs?: number;
  maxPerRun?: number;
}

export const DEFAULT_RESCAN = { checkMs: 60_000, periodMs: 6 * 3600_000, maxPerRun: 20 } as const;

export class RescanScheduler {
  readonly #o: Required<RescanOptions>;
  #timer: NodeJS.Timeout | undefined;
  #running: Promise<unknown> | undefined;
  #seen: string | undefined;
  #lastRun = 0;

  constructor(
    private readonly d: RescanDeps,
    options: RescanOptions = {},
  ) {
    this.#o = { ...DEFAULT_RESCAN, ...options };
  }

  start(): void {
    this.#lastRun = Date.now();
    this.#timer = setInterval(() => void this.tick(), this.#o.checkMs);
    this.#timer.unref();
  }

  /** Stops the timer and waits for a run in progress (its current scan) to end. */
  async stop(): Promise<void> {
    clearInterval(this.#timer);
    this.#timer = undefined;
    await this.#running;
  }

  private async tick(): Promise<void> {
    if (this.#running) return;
    try {
      // Nothing was ever scanned here: no rescan to make, and the advisory data is not even loaded for it.
      if (!(await this.d.anyScanned())) return;
      const cur = await this.d.current();
      const key = `${cur.advisoriesSha256 ?? ""}/${cur.rulesSha256 ?? ""}`;
      const changed = this.#seen !== undefined && key !== this.#seen;
      this.#seen = key;
      if (changed || Date.now() - this.#lastRun >= this.#o.periodMs) await this.runOnce(changed ? "advisory data or rules changed" : "periodic");
    } catch (err) {
      this.d.log.warn({ err }, "posture rescan check failed");
    }
  }

  /** One run now: the dormant, previously scanned VMs that are behind, most behind first, up to maxPerRun. */
  runOnce(reason: string): Promise<{ scanned: string[]; failed: { vm: string; error: string }[] }> {
    const run = (async () => {
      this.#lastRun = Date.now();
      const now = this.d.now?.() ?? new Date();
      const [vms, rows, cur] = await Promise.all([this.d.all(), this.d.rows(), this.d.current()]);
      const byId = new Map(rows.map((r) => [r.vmId, r]));
      const due: { name: string; b: Behind }[] = [];
      for (const vm of vms) {
        if (!isDormant(vm) || !byId.get(vm.id)?.scan) continue;
        const b = behindOf(byId.get(vm.id), cur, await this.d.policyOf(vm), now);
        if (b.behind) due.push({ name: vm.name, b });
      }
      due.sort((x, y) => (y.b.ageDays ?? 0) - (x.b.ageDays ?? 0) || x.name.localeCompare(y.name));
      const scanned: string[] = [];
      const failed: { vm: string; error: string }[] = [];
      for (const { name } of due.slice(0, this.#o.maxPerRun)) {
        try {
          await this.d.scan(name);
          scanned.push(name);
        } catch (err) {
          failed.push({ vm: name, error: (err as Error).message });
        }
      }
      if (due.length > 0) this.d.log.info({ reason, due: due.length, scanned, failed }, "posture rescans");
      return { scanned, failed };
    })();
    this.#running = run.finally(() => (this.#running = undefined));
    return run;
  }
}
