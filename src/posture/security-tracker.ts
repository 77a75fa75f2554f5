/**
 * The Debian security tracker's JSON (https://security-tracker.debian.org/tracker/data/json), loaded from a file
 * (vigil has no network): `{ sourcePackage: { "CVE-…": { description, releases: { bookworm: { status,
 * fixed_version, urgency, repositories } } } } }`. It names the CVEs behind a pending update and their urgency.
 *
 * Only one release is kept (the scanned system's codename), so memory follows that release, not the whole file.
 * The file is hostile input (`--from FILE`): its size, the number of packages and of entries are bounded, every
 * value vigil keeps is type-checked, and a malformed one is refused with a VigilError naming its JSON path.
 *
 * Semantics, as the tracker defines them:
 * - `resolved` with `fixed_version` V: versions before V are affected; V = "0" means the release never was.
 * - `open`: every version is affected and no fix exists yet; `undetermined`: not known, not reported as affected.
 * Urgency scale (shared with the posture record, posture-state.ts SEVERITIES): unimportant < unknown < low <
 * medium < high < critical. "not yet assigned" and "end-of-life" (the release no longer gets fixes for the
 * package) map to `unknown`: vigil does not guess a severity; any other unknown word maps to `unknown` too and is
 * kept verbatim in `urgency`. A trailing `*`/`**` (the tracker's marks on some urgencies) is ignored.
 */
import { createHash } from "node:crypto";
import { VigilError, q } from "../errors.ts";
import { checkPackageName } from "./dpkg-status.ts";
import { type DebianVersion, compareVersions, parseVersion } from "./dpkg-version.ts";

import { SEVERITIES, severityRank, type Severity } from "./posture-state.ts";
export { SEVERITIES, severityRank, type Severity };

/** The whole tracker file is ~80 MiB today. */
export const MAX_TRACKER_BYTES = 256 << 20;
export const MAX_TRACKER_PACKAGES = 200_000;
export const MAX_TRACKER_ENTRIES = 3_000_000;
/** Descriptions are kept to this many characters (the scan record shows them; the full text stays in the file). */
export const MAX_DESCRIPTION_CHARS = 1_000;
const ID = /^[A-Z][A-Z0-9]*(-[A-Za-z0-9]+){1,3}$/; // CVE-2024-6387, TEMP-0000000-ABCDEF

export type TrackerStatus = "resolved" | "open" | "undetermined";

export interface TrackerEntry {
  id: string;
  description: string;
  status: TrackerStatus;
  /** For `resolved`: the first fixed version ("0": never affected). */
  fixedVersion?: string;
  parsedFixed?: DebianVersion;
  /** The tracker's word. */
  urgency: string;
  severity: Severity;
}

export interface SecurityTracker {
  release: string;
  /** source package → its entries for `release`. */
  sources: Map<string, TrackerEntry[]>;
  descriptor: { kind: "debian-security-tracker"; sha256: string; bytes: number; release: string; entries: number };
}

/** Maps a tracker urgency to the severity scale. */
export function severityOf(urgency: string): Severity {
  const u = urgency.replace(/\*+$/, "");
  if (u === "unimportant" || u === "low" || u === "medium" || u === "high") return u;
  return "unknown";
}

function bad(path: string, what: string): VigilError {
  return new VigilError("VIGIL_BAD_REQUEST", `Cannot read the security tracker data at ${path}: ${what}`, { field: path });
}

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === "object" && v !== null && !Array.isArray(v);
const STATUSES = new Set(["resolved", "open", "undetermined"]);

/**
 * Parses tracker JSON for one release (`bookworm`). Entries without that release are skipped (they concern others).
 */
export function parseSecurityTracker(input: Buffer | string, release: string): SecurityTracker {
  if (!/^[a-z][a-z0-9-]{0,31}$/.test(release)) throw new VigilError("VIGIL_BAD_REQUEST", `Invalid release name ${q(release)}`, { field: "release" });
  const size = typeof input === "string" ? Buffer.byteLength(input) : input.length;
  if (size > MAX_TRACKER_BYTES) throw bad("$", `${size} bytes is more than the limit of ${MAX_TRACKER_BYTES}`);
  let doc: unknown;
  try {
    doc = JSON.parse(typeof input === "string" ? input : input.toString("utf8"));
  } catch (e) {
    // JSON.parse is linear; absurd nesting ends as a RangeError, also refused here
    throw new VigilError("VIGIL_BAD_REQUEST", `Cannot read the security tracker data: not JSON (${(e as Error).message.slice(0, 120)})`, { field: "$", cause: e });
  }
  if (!isObject(doc)) throw bad("$", "expected an object of source packages");
  const names = Object.keys(doc);
  if (names.length > MAX_TRACKER_PACKAGES) throw bad("$", `more than ${MAX_TRACKER_PACKAGES} packages`);
  const sources = new Map<string, TrackerEntry[]>();
  let entries = 0;
  for (const pkg of names) {
    const at = `$[${JSON.stringify(pkg)}]`;
    checkPackageName(pkg, `security tracker ${at}`);
    const cves = doc[pkg];
    if (!isObject(cves)) throw bad(at, "expected an object of CVE entries");
    const list: TrackerEntry[] = [];
    for (const id of Object.keys(cves)) {
      if (++entries > MAX_TRACKER_ENTRIES) throw bad(at, `more than ${MAX_TRACKER_ENTRIES} entries in the file`);
      const ap = `${at}[${JSON.stringify(id.slice(0, 40))}]`;
      if (id.length > 40 || !ID.test(id)) throw bad(ap, `invalid advisory id ${q(id.slice(0, 40))} (expected e.g. "CVE-2024-6387")`);
      const e = cves[id];
      if (!isObject(e)) throw bad(ap, "expected an object");
      if (e.description !== undefined && typeof e.description !== "string") throw bad(`${ap}.description`, "expected a string");
      if (e.releases === undefined) continue;
      if (!isObject(e.releases)) throw bad(`${ap}.releases`, "expected an object");
      const r = Object.hasOwn(e.releases, release) ? e.releases[release] : undefined; // never an inherited "constructor"
      if (r === undefined) continue;
      const rp = `${ap}.releases.${release}`;
      if (!isObject(r)) throw bad(rp, "expected an object");
      if (typeof r.status !== "string" || !STATUSES.has(r.status)) throw bad(`${rp}.status`, `expected resolved, open or undetermined, found ${q(String(r.status).slice(0, 40))}`);
      const urgency = r.urgency === undefined ? "not yet assigned" : r.urgency;
      if (typeof urgency !== "string" || urgency.length > 40) throw bad(`${rp}.urgency`, "expected a short string");
      const entry: TrackerEntry = { id, description: (e.description ?? "").slice(0, MAX_DESCRIPTION_CHARS), status: r.status as TrackerStatus, urgency, severity: severityOf(urgency) };
      if (r.fixed_version !== undefined) {
        if (typeof r.fixed_version !== "string") throw bad(`${rp}.fixed_version`, "expected a version string");
        entry.fixedVersion = r.fixed_version;
        entry.parsedFixed = parseVersion(r.fixed_version, `security tracker ${rp}.fixed_version`);
      } else if (r.status === "resolved") {
        throw bad(`${rp}.fixed_version`, "a resolved entry needs its fixed version");
      }
      list.push(entry);
    }
    if (list.length > 0) sources.set(pkg, list);
  }
  return {
    release,
    sources,
    descriptor: { kind: "debian-security-tracker", sha256: createHash("sha256").update(input).digest("hex"), bytes: size, release, entries },
  };
}

const NEVER = parseVersion("0");

/**
 * The entries affecting source package `source` at `version`: resolved ones fixed after it (and not "0"), and open
 * ones. Sorted by id.
 */
export function affecting(tracker: SecurityTracker, source: string, version: DebianVersion): TrackerEntry[] {
  return (tracker.sources.get(source) ?? [])
    .filter((e) => (e.status === "open" ? true : e.status === "resolved" && e.parsedFixed !== undefined && compareVersions(e.parsedFixed, NEVER) !== 0 && compareVersions(version, e.parsedFixed) < 0))
    .sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
}

/** The highest severity of `entries` ("unknown" when there are none: a security update without a named CVE). */
export function maxSeverity(entries: ReadonlyArray<{ severity: Severity }>): Severity {
  let best: Severity | undefined;
  for (const e of entries) if (best === undefined || severityRank(e.severity) > severityRank(best)) best = e.severity;
  return best ?? "unknown";
}

/**
 * The tracker data of one release in the tracker's own format, to be stored by `advisories update` so that a scan
 * parses a few MiB instead of the whole file: parsing the result gives the same entries (descriptions as kept).
 */
export function trackerSubsetJson(tracker: SecurityTracker): string {
  const doc: Record<string, Record<string, unknown>> = {};
  for (const [src, list] of tracker.sources) {
    const cves: Record<string, unknown> = {};
    for (const e of list) {
      cves[e.id] = { description: e.description, releases: { [tracker.release]: { status: e.status, urgency: e.urgency, ...(e.fixedVersion !== undefined ? { fixed_version: e.fixedVersion } : {}) } } };
    }
    doc[src] = cves;
  }
  return JSON.stringify(doc);
}
