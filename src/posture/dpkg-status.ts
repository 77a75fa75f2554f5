/**
 * The packages installed on a system, read from its dpkg database (`/var/lib/dpkg/status`), which comes from a
 * guest's disk and is hostile: every field vigil uses is validated (names, versions, architectures, the Source
 * field) and a malformed one is refused with a VigilError naming the line.
 *
 * Which packages count as installed: those whose files of that version are on disk, i.e. Status
 * `<want> ok|reinstreq <state>` with state `installed`, `triggers-pending`, `triggers-awaited`, `half-configured` or
 * `unpacked`, whatever the selection (`install`, `hold`, `deinstall`, `purge`): a package held, or selected for
 * removal but not yet removed, still has its vulnerable files. `config-files`, `half-installed` and
 * `not-installed` entries are skipped (no or partial program files). Each package keeps its state, so a consumer
 * can treat the unusual ones apart.
 */
import { VigilError, q } from "../errors.ts";
import { type Deb822Limits, DEB822_LIMITS, type Stanza, fieldValue, parseDeb822 } from "./deb822.ts";
import { type DebianVersion, parseVersion } from "./dpkg-version.ts";

/** dpkg's package-name rule (Debian policy 5.6.1), lower case only; longer names are refused. */
export const PACKAGE_NAME = /^[a-z0-9][a-z0-9+.-]*$/;
export const MAX_PACKAGE_NAME_LENGTH = 128;
const ARCH = /^[a-z0-9][a-z0-9-]{0,31}$/;

const WANTS = new Set(["unknown", "install", "hold", "deinstall", "purge"]);
const FLAGS = new Set(["ok", "reinstreq"]);
const STATES = new Set(["not-installed", "config-files", "half-installed", "unpacked", "half-configured", "triggers-awaited", "triggers-pending", "installed"]);
/** States in which the package's files of its Version are on disk. */
export const ON_DISK_STATES: ReadonlySet<string> = new Set(["unpacked", "half-configured", "triggers-awaited", "triggers-pending", "installed"]);

export type MultiArch = "no" | "same" | "foreign" | "allowed";

export interface InstalledPackage {
  name: string;
  version: string;
  parsedVersion: DebianVersion;
  architecture: string;
  /** The source package (the `Source` field, or the package's own name). */
  source: string;
  /** The source version: `Source: name (version)`, or the package's own version. */
  sourceVersion: string;
  multiArch: MultiArch;
  /** The dpkg state (third word of Status): `installed` for nearly all. */
  state: string;
}

function err(source: string, line: number, what: string): VigilError {
  return new VigilError("VIGIL_BAD_REQUEST", `Cannot parse ${source}, line ${line}: ${what}`, { field: `${source}:${line}` });
}

/** Validates a package name from `field` (for messages). */
export function checkPackageName(name: string, where: string): string {
  if (name.length > MAX_PACKAGE_NAME_LENGTH || !PACKAGE_NAME.test(name)) {
    throw new VigilError("VIGIL_BAD_REQUEST", `Cannot parse ${where}: invalid package name ${q(name.slice(0, 80))} (allowed: a-z 0-9 + . -, starting with a letter or digit, at most ${MAX_PACKAGE_NAME_LENGTH})`, { field: where });
  }
  return name;
}

/** Validates an architecture name. */
export function checkArchitecture(arch: string, where: string): string {
  if (!ARCH.test(arch)) throw new VigilError("VIGIL_BAD_REQUEST", `Cannot parse ${where}: invalid architecture ${q(arch.slice(0, 80))}`, { field: where });
  return arch;
}

/**
 * `Source: name` or `Source: name (version)`: the source package and its version (the binary's version when
 * absent, as dpkg defines it).
 */
export function parseSourceField(value: string | undefined, pkg: string, version: string, where: string): { source: string; sourceVersion: string } {
  if (value === undefined) return { source: pkg, sourceVersion: version };
  const m = /^([^ ()]+)(?: \(([^ ()]+)\))?$/.exec(value);
  if (!m) throw new VigilError("VIGIL_BAD_REQUEST", `Cannot parse ${where}: expected "name" or "name (version)", found ${q(value.slice(0, 80))}`, { field: where });
  const source = checkPackageName(m[1]!, where);
  if (m[2] === undefined) return { source, sourceVersion: version };
  parseVersion(m[2], where);
  return { source, sourceVersion: m[2] };
}

function multiArchOf(value: string | undefined, where: string): MultiArch {
  if (value === undefined) return "no";
  if (value === "no" || value === "same" || value === "foreign" || value === "allowed") return value;
  throw new VigilError("VIGIL_BAD_REQUEST", `Cannot parse ${where}: expected no, same, foreign or allowed, found ${q(value.slice(0, 40))}`, { field: where });
}

function lineOf(s: Stanza, name: string): number {
  return s.fields.get(name.toLowerCase())?.line ?? s.line;
}

/**
 * Parses a dpkg status file into its installed packages (see the header for which count), sorted by name then
 * architecture. A package name and architecture appearing twice is refused (dpkg keeps one entry per pair).
 */
export function parseDpkgStatus(input: Buffer | string, source = "dpkg status", limits: Deb822Limits = DEB822_LIMITS): InstalledPackage[] {
  const out: InstalledPackage[] = [];
  const seen = new Set<string>();
  for (const s of parseDeb822(input, source, limits)) {
    const name = fieldValue(s, "Package");
    if (name === undefined) throw err(source, s.line, "the stanza has no Package field");
    const at = (f: string) => `${source}, line ${lineOf(s, f)}: ${f}`;
    checkPackageName(name, at("Package"));
    const status = fieldValue(s, "Status");
    if (status === undefined) throw err(source, s.line, `package ${q(name)} has no Status field`);
    const words = status.split(" ");
    if (words.length !== 3 || !WANTS.has(words[0]!) || !FLAGS.has(words[1]!) || !STATES.has(words[2]!)) {
      throw err(source, lineOf(s, "Status"), `Status must be "<want> <flag> <state>" with dpkg's words, found ${q(status.slice(0, 80))}`);
    }
    const state = words[2]!;
    if (!ON_DISK_STATES.has(state)) continue;
    const version = fieldValue(s, "Version");
    if (version === undefined) throw err(source, s.line, `installed package ${q(name)} has no Version field`);
    const parsedVersion = parseVersion(version, at("Version"));
    const arch = fieldValue(s, "Architecture");
    if (arch === undefined) throw err(source, s.line, `installed package ${q(name)} has no Architecture field`);
    checkArchitecture(arch, at("Architecture"));
    const key = `${name}:${arch}`;
    if (seen.has(key)) throw err(source, s.line, `package ${q(key)} appears twice`);
    seen.add(key);
    const { source: src, sourceVersion } = parseSourceField(fieldValue(s, "Source"), name, version, at("Source"));
    out.push({ name, version, parsedVersion, architecture: arch, source: src, sourceVersion, multiArch: multiArchOf(fieldValue(s, "Multi-Arch"), at("Multi-Arch")), state });
  }
  return out.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : a.architecture < b.architecture ? -1 : a.architecture > b.architecture ? 1 : 0));
}
