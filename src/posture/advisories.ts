/**
 * The advisory data a scan compares against, as one value: the security suite's index (one or more `Packages`
 * files, e.g. one per architecture) and optionally the security tracker, with one sha256 naming the whole set —
 * what `vigil advisories update --from FILE|DIR` records and a scan stores (posture-state.ts `advisoriesSha256`).
 * And the step a scan runs: a guest's dpkg status in, its packages and pending updates out, in the shapes of the
 * posture record (posture-repository.ts ScanRecord).
 */
import { createHash } from "node:crypto";
import { readdirSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { VigilError, q } from "../errors.ts";
import { type DataSourceDescriptor, type PackagesIndex, findRelease, loadPackagesIndex, readRelease } from "./apt-index.ts";
import { parseDpkgStatus } from "./dpkg-status.ts";
import { compareVersions } from "./dpkg-version.ts";
import { type PendingUpdate, pendingUpdates } from "./pending.ts";
import { MAX_TRACKER_BYTES, type SecurityTracker, parseSecurityTracker } from "./security-tracker.ts";

/** At most this many index files in one advisory set (a suite has one per architecture and component). */
export const MAX_INDEX_FILES = 64;

export interface Advisories {
  index: PackagesIndex;
  tracker?: SecurityTracker;
  /** sha256 over the sorted content hashes of every file used: equal iff the same data. */
  sha256: string;
  indexes: DataSourceDescriptor[];
  trackerDescriptor?: SecurityTracker["descriptor"];
}

/**
 * The security suite's `Packages` files in an apt lists directory: those whose Release/InRelease beside them has a
 * Codename or Suite ending in "-security", for the given architectures.
 */
export function findSecurityIndexes(dir: string, architectures: readonly string[] = ["amd64"]): string[] {
  const out: string[] = [];
  for (const f of readdirSync(dir).sort()) {
    const m = /_binary-([a-z0-9-]+)_Packages(\.[a-z0-9]+)?$/.exec(f);
    if (!m || !architectures.includes(m[1]!)) continue;
    const path = join(dir, f);
    const rel = findRelease(path);
    if (!rel) continue;
    const info = readRelease(rel.path, undefined, undefined);
    if ([info.codename, info.suite].some((s) => s?.endsWith("-security"))) out.push(path);
  }
  return out;
}

/** Merges `b` into `a`, keeping the newest entry per (name, arch). */
function merge(a: PackagesIndex, b: PackagesIndex): void {
  for (const [name, byArch] of b) {
    let mine = a.get(name);
    if (!mine) a.set(name, (mine = new Map()));
    for (const [arch, e] of byArch) {
      const prev = mine.get(arch);
      if (!prev || compareVersions(prev.parsedVersion, e.parsedVersion) < 0) mine.set(arch, e);
    }
  }
}

/**
 * Loads advisory data. `from` is an index file or an apt lists directory (its security suite's indexes for
 * `architectures`); `tracker` an optional tracker JSON file, read for `release` (default: the index Release's
 * codename without "-security", e.g. "bookworm").
 */
export async function loadAdvisories(from: string, opts: { tracker?: string; release?: string; architectures?: string[] } = {}): Promise<Advisories> {
  let files: string[];
  try {
    files = statSync(from).isDirectory() ? findSecurityIndexes(from, opts.architectures) : [from];
  } catch (e) {
    throw new VigilError("VIGIL_NOT_FOUND", `Cannot read advisories from ${q(from)}: ${(e as Error).message}`, { field: "from", cause: e });
  }
  if (files.length === 0) throw new VigilError("VIGIL_BAD_REQUEST", `Cannot read advisories from ${q(from)}: no security suite Packages index there (for ${(opts.architectures ?? ["amd64"]).join(", ")})`, { field: "from" });
  if (files.length > MAX_INDEX_FILES) throw new VigilError("VIGIL_BAD_REQUEST", `Cannot read advisories from ${q(from)}: more than ${MAX_INDEX_FILES} index files`, { field: "from" });
  const index: PackagesIndex = new Map();
  const indexes: DataSourceDescriptor[] = [];
  for (const f of files) {
    const loaded = await loadPackagesIndex(f);
    merge(index, loaded.index);
    indexes.push(loaded.descriptor);
  }
  const hashes = indexes.map((d) => `index:${d.contentSha256}`);
  const result: Advisories = { index, sha256: "", indexes };
  if (opts.tracker !== undefined) {
    const release = opts.release ?? indexes.map((d) => d.release?.codename?.replace(/-security$/, "")).find((c) => c !== undefined);
    if (release === undefined) throw new VigilError("VIGIL_BAD_REQUEST", "Cannot read the security tracker data: no release given and the index has no Release naming one", { field: "release" });
    let bytes: Buffer;
    try {
      if (statSync(opts.tracker).size > MAX_TRACKER_BYTES) throw new VigilError("VIGIL_BAD_REQUEST", `Cannot read the security tracker data ${q(opts.tracker)}: more than ${MAX_TRACKER_BYTES} bytes`, { field: "tracker" });
      bytes = readFileSync(opts.tracker);
    } catch (e) {
      if (e instanceof VigilError) throw e;
      throw new VigilError("VIGIL_NOT_FOUND", `Cannot read the security tracker data ${q(opts.tracker)}: ${(e as Error).message}`, { field: "tracker", cause: e });
    }
    result.tracker = parseSecurityTracker(bytes, release);
    result.trackerDescriptor = result.tracker.descriptor;
    hashes.push(`tracker:${release}:${result.tracker.descriptor.sha256}`);
  }
  result.sha256 = createHash("sha256").update(hashes.sort().join("\n")).digest("hex");
  return result;
}

/** What a scan records about packages, in the posture record's shapes. */
export interface PackageAssessment {
  packages: { name: string; version: string; arch: string }[];
  pending: Array<Pick<PendingUpdate, "package" | "installed" | "candidate" | "severity" | "cves">>;
  advisoriesSha256: string;
  notes: string[];
}

/** A guest's dpkg status (bytes read from its disk) against the advisories. */
export function assessPackages(status: Buffer, advisories: Advisories): PackageAssessment {
  const installed = parseDpkgStatus(status, "the guest's /var/lib/dpkg/status");
  const pending = pendingUpdates(installed, advisories.index, advisories.tracker);
  const notes = installed.filter((p) => p.state !== "installed").map((p) => `${p.name}:${p.architecture} is ${p.state} (counted: its files are on disk)`);
  return {
    packages: installed.map((p) => ({ name: p.name, version: p.version, arch: p.architecture })),
    pending: pending.map((p) => ({ package: p.package, installed: p.installed, candidate: p.candidate, severity: p.severity, cves: p.cves })),
    advisoriesSha256: advisories.sha256,
    notes,
  };
}
