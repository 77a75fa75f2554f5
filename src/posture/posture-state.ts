/**
 * The computed posture of a VM (issue 13, item 1; docs/transience.md "Posture"): one word an operator and the
 * network-access gate can act on, and the reasons behind it. Pure: the inputs are what the last scan found, what the
 * VM did since, and which advisory data and rules are current now.
 *
 * Precedence, worst first: `infected` (a signature finding: whatever else holds, the VM must not reach the network)
 * > `vulnerable` (a pending security update at or above the policy's severity) > `stale` (the scan no longer
 * describes the VM or the world: too old, the VM ran since, the advisories or the rules changed, or the scan did
 * not finish) > `current`. A VM never scanned is `unknown`: vigil does not guess.
 */

export type PostureState = "current" | "stale" | "vulnerable" | "infected" | "unknown";

/** Debian security tracker urgencies, ordered; "unknown" is an urgency the tracker has not assigned yet. */
export const SEVERITIES = ["unimportant", "unknown", "low", "medium", "high", "critical"] as const;
export type Severity = (typeof SEVERITIES)[number];

export const severityRank = (s: Severity): number => SEVERITIES.indexOf(s);

export interface PosturePolicy {
  /** A scan older than this many days is stale. */
  maxScanAgeDays: number;
  /** Pending updates at or above this severity make the VM `vulnerable`. */
  vulnerableAt: Severity;
}

/**
 * Deny by default: any pending security update the tracker does not call "unimportant" makes a VM vulnerable,
 * including those of unknown urgency (without tracker data every security-suite update is "unknown": each one is
 * still a security fix). Operators raise the threshold per scope.
 */
export const DEFAULT_POSTURE_POLICY: PosturePolicy = { maxScanAgeDays: 7, vulnerableAt: "unknown" };

export interface ScanSummary {
  /** When the scan read the image (ISO 8601). */
  scannedAt: string;
  /** The advisory data the scan compared against (its descriptor's sha256). */
  advisoriesSha256: string;
  /** The signature rules it scanned with. */
  rulesSha256: string;
  /** False when a budget ended the signature scan early. */
  complete: boolean;
  /** Taken through the guest agent while the VM ran (so running since then is what was scanned). */
  inBand?: boolean;
  pending: { package: string; severity: Severity }[];
  findings: { path: string; rule: string }[];
}

export interface PostureInputs {
  lastScan?: ScanSummary;
  /** The last time the VM was running (ISO 8601), if ever. */
  lastRunningAt?: string;
  /** The VM is running now: its disk is changing under any earlier scan. */
  running: boolean;
  currentAdvisoriesSha256?: string;
  currentRulesSha256?: string;
  now: Date;
}

export interface Posture {
  state: PostureState;
  /** Every reason that applies, worst first; the first names the state. */
  reasons: string[];
}

const DAY_MS = 86_400_000;

export function computePosture(i: PostureInputs, policy: PosturePolicy = DEFAULT_POSTURE_POLICY): Posture {
  const s = i.lastScan;
  if (!s) return { state: "unknown", reasons: ["never scanned"] };
  const infected = s.findings.map((f) => `signature ${f.rule} in ${f.path}`);
  const threshold = severityRank(policy.vulnerableAt);
  const vulnerable = s.pending.filter((p) => severityRank(p.severity) >= threshold).map((p) => `pending ${p.severity} security update for ${p.package}`);
  const stale: string[] = [];
  const ageMs = i.now.getTime() - Date.parse(s.scannedAt);
  if (!(ageMs <= policy.maxScanAgeDays * DAY_MS)) stale.push(`last scanned ${Number.isFinite(ageMs) ? Math.floor(ageMs / DAY_MS) : "?"} days ago (policy: ${policy.maxScanAgeDays})`);
  const scannedWhileThisRun = s.inBand === true && (i.lastRunningAt === undefined || Date.parse(i.lastRunningAt) <= Date.parse(s.scannedAt));
  if (i.running && !scannedWhileThisRun) stale.push("running since the scan (its disk is changing)");
  else if (!i.running && i.lastRunningAt !== undefined && Date.parse(i.lastRunningAt) > Date.parse(s.scannedAt)) stale.push(`ran at ${i.lastRunningAt}, after the scan`);
  if (i.currentAdvisoriesSha256 !== undefined && i.currentAdvisoriesSha256 !== s.advisoriesSha256) stale.push("the advisory data changed since the scan");
  if (i.currentRulesSha256 !== undefined && i.currentRulesSha256 !== s.rulesSha256) stale.push("the signature rules changed since the scan");
  if (!s.complete) stale.push("the last signature scan did not finish");
  const reasons = [...infected, ...vulnerable, ...stale];
  const state: PostureState = infected.length > 0 ? "infected" : vulnerable.length > 0 ? "vulnerable" : stale.length > 0 ? "stale" : "current";
  return { state, reasons: reasons.length > 0 ? reasons : ["scanned, nothing pending above the policy, no findings"] };
}
