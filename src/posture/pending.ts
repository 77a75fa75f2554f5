/**
 * Pending security updates: the installed packages (dpkg status) against the security suite's index, and
 * optionally the security tracker to name the CVEs each update fixes and its severity. Pure and linear in the
 * number of installed packages (one map lookup each).
 *
 * Rules:
 * - A package is pending when the index holds the same name for its architecture at a version newer than the
 *   installed one (dpkg order). An `all` package matches `all` entries only; there is no cross-architecture match.
 * - CVEs are the tracker's entries for the installed package's SOURCE at its source version (the tracker speaks
 *   of sources) that the candidate fixes: resolved, installed source version < fixed_version ≤ candidate's source
 *   version. Entries fixed only in a later version (no update yet) and open ones are not the update's: they are in
 *   `unfixed`, so a scan can still show them.
 * - Severity is the highest urgency among the update's CVEs; `unknown` when there is no tracker, or it names none
 *   (the security suite only carries security fixes, so an update there is never "no severity").
 */
import type { IndexEntry, PackagesIndex } from "./apt-index.ts";
import type { InstalledPackage } from "./dpkg-status.ts";
import { compareVersions, parseVersion } from "./dpkg-version.ts";
import { type SecurityTracker, type Severity, affecting, maxSeverity } from "./security-tracker.ts";

export interface PendingUpdate {
  package: string;
  architecture: string;
  installed: string;
  candidate: string;
  source: string;
  /** CVEs the candidate fixes, sorted. */
  cves: string[];
  severity: Severity;
  /** CVEs affecting the installed source version that the candidate does not fix (open, or fixed later). */
  unfixed: string[];
}

/** The pending security updates of `installed`, sorted by package then architecture. */
export function pendingUpdates(installed: readonly InstalledPackage[], index: PackagesIndex, tracker?: SecurityTracker): PendingUpdate[] {
  const out: PendingUpdate[] = [];
  for (const p of installed) {
    const c: IndexEntry | undefined = index.get(p.name)?.get(p.architecture);
    if (!c || compareVersions(p.parsedVersion, c.parsedVersion) >= 0) continue;
    let cves: string[] = [];
    let unfixed: string[] = [];
    let severity: Severity = "unknown";
    if (tracker) {
      const candidateSource = parseVersion(c.sourceVersion, "candidate source version");
      const hits = affecting(tracker, p.source, parseVersion(p.sourceVersion, `${p.name}: source version`));
      const fixed = hits.filter((e) => e.status === "resolved" && e.parsedFixed !== undefined && compareVersions(e.parsedFixed, candidateSource) <= 0);
      cves = fixed.map((e) => e.id);
      unfixed = hits.filter((e) => !fixed.includes(e)).map((e) => e.id);
      severity = maxSeverity(fixed);
    }
    out.push({ package: p.name, architecture: p.architecture, installed: p.version, candidate: c.version, source: p.source, cves, severity, unfixed });
  }
  return out.sort((a, b) => (a.package < b.package ? -1 : a.package > b.package ? 1 : a.architecture < b.architecture ? -1 : a.architecture > b.architecture ? 1 : 0));
}
