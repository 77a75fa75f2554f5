/**
 * apt `Packages` indexes (the security suite's is the "what updates exist" side of a posture scan) and the
 * data-source descriptor a scan records: which index file, its sha256, and what its Release/InRelease says about it
 * (suite, Date, Valid-Until, and whether the index's bytes are the ones the Release lists).
 *
 * Decisions:
 * - apt keeps indexes compressed (lz4 here, gz/xz/zst/bz2 elsewhere). They are decompressed at load by apt's own
 *   `/usr/lib/apt/apt-helper cat-file` (every compressor apt supports, and the tool that wrote them) rather than by
 *   a decompressor in vigil: node has no lz4. Its output is capped at the deb822 byte limit (a decompression bomb
 *   kills it and is refused) and at a time-out; the compressed input is capped at MAX_INDEX_FILE_BYTES.
 * - An index is hostile input (it may come from `--from FILE`): names, versions and architectures are validated as
 *   in the dpkg status; a malformed stanza refuses the whole index (a partial index would under-report updates).
 * - Newest per (name, architecture): an index may list several versions of a package; the newest by dpkg order wins.
 */
import { execFile } from "node:child_process";
import { runCommand } from "../util/run-command.ts";
import { createHash } from "node:crypto";
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { basename, dirname, join } from "node:path";
import { VigilError, q } from "../errors.ts";
import { type Deb822Limits, DEB822_LIMITS, fieldValue, parseDeb822 } from "./deb822.ts";
import { checkArchitecture, checkPackageName, parseSourceField } from "./dpkg-status.ts";
import { type DebianVersion, compareVersions, parseVersion } from "./dpkg-version.ts";

/** Largest index or Release file read from disk (before decompression). bookworm main's Packages.xz is ~9 MiB. */
export const MAX_INDEX_FILE_BYTES = 64 << 20;
/** Largest Release/InRelease accepted (bookworm's main InRelease is ~150 KiB). */
export const MAX_RELEASE_BYTES = 4 << 20;
const APT_HELPER = "/usr/lib/apt/apt-helper";
const DECOMPRESS_TIMEOUT_MS = 30_000;
const COMPRESSED = /\.(lz4|gz|xz|zst|bz2|lzma)$/;

export interface IndexEntry {
  version: string;
  parsedVersion: DebianVersion;
  source: string;
  sourceVersion: string;
}

/** name → architecture → newest entry. */
export type PackagesIndex = Map<string, Map<string, IndexEntry>>;

/** Parses a decompressed `Packages` index into the newest version of each (name, architecture). */
export function parsePackagesIndex(input: Buffer | string, source = "Packages index", limits: Deb822Limits = DEB822_LIMITS): PackagesIndex {
  const index: PackagesIndex = new Map();
  for (const s of parseDeb822(input, source, limits)) {
    const at = (f: string) => `${source}, line ${s.fields.get(f.toLowerCase())?.line ?? s.line}: ${f}`;
    const name = fieldValue(s, "Package");
    const version = fieldValue(s, "Version");
    const arch = fieldValue(s, "Architecture");
    if (name === undefined || version === undefined || arch === undefined) {
      throw new VigilError("VIGIL_BAD_REQUEST", `Cannot parse ${source}, line ${s.line}: a stanza needs Package, Version and Architecture`, { field: `${source}:${s.line}` });
    }
    checkPackageName(name, at("Package"));
    checkArchitecture(arch, at("Architecture"));
    const parsedVersion = parseVersion(version, at("Version"));
    const { source: src, sourceVersion } = parseSourceField(fieldValue(s, "Source"), name, version, at("Source"));
    let byArch = index.get(name);
    if (!byArch) index.set(name, (byArch = new Map()));
    const prev = byArch.get(arch);
    if (!prev || compareVersions(prev.parsedVersion, parsedVersion) < 0) byArch.set(arch, { version, parsedVersion, source: src, sourceVersion });
  }
  return index;
}

function readBounded(path: string, max: number, what: string): Buffer {
  let size: number;
  try {
    const st = statSync(path);
    if (!st.isFile()) throw new VigilError("VIGIL_BAD_REQUEST", `Cannot read ${what} ${q(path)}: not a regular file`, { field: "path" });
    size = st.size;
  } catch (e) {
    if (e instanceof VigilError) throw e;
    throw new VigilError("VIGIL_NOT_FOUND", `Cannot read ${what} ${q(path)}: ${(e as Error).message}`, { field: "path", cause: e });
  }
  if (size > max) throw new VigilError("VIGIL_BAD_REQUEST", `Cannot read ${what} ${q(path)}: ${size} bytes is more than the limit of ${max}`, { field: "path" });
  const bytes = readFileSync(path);
  if (bytes.length > max) throw new VigilError("VIGIL_BAD_REQUEST", `Cannot read ${what} ${q(path)}: it grew past the limit of ${max} bytes`, { field: "path" });
  return bytes;
}

/**
 * Decompresses the bytes already read (and hashed): they go to a private temporary file, so what is parsed is
 * exactly what the descriptor's sha256 names even if the list file is replaced meanwhile.
 */
async function decompressBytes(raw: Buffer, ext: string, maxOut: number, shownAs: string): Promise<Buffer> {
  const dir = mkdtempSync(join(tmpdir(), "vigil-index-"));
  try {
    const file = join(dir, `index${ext}`);
    writeFileSync(file, raw, { mode: 0o600 });
    return await decompress(file, maxOut, shownAs);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Decompresses an index with apt-helper, bounded in output size and time. */
function decompress(path: string, maxOut: number, shownAs: string): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const child = execFile(APT_HELPER, ["cat-file", path], { encoding: "buffer", maxBuffer: maxOut, timeout: DECOMPRESS_TIMEOUT_MS }, (err, stdout, stderr) => {
      if (!err) return resolve(stdout);
      const e = err as NodeJS.ErrnoException & { killed?: boolean };
      const why =
        e.code === "ERR_CHILD_PROCESS_STDIO_MAXBUFFER" ? `it decompresses to more than ${maxOut} bytes`
        : e.code === "ENOENT" ? `${APT_HELPER} is not installed`
        : e.killed ? `decompressing took more than ${DECOMPRESS_TIMEOUT_MS} ms`
        : `apt-helper failed: ${stderr.toString("utf8").trim().split("\n").slice(-2).join(" | ") || e.message}`;
      reject(new VigilError("VIGIL_BAD_REQUEST", `Cannot read the index ${q(shownAs)}: ${why}`, { field: "path", cause: err }));
    });
    child.stdin?.end();
  });
}

export interface ReleaseInfo {
  path: string;
  sha256: string;
  origin?: string;
  suite?: string;
  codename?: string;
  /** As written in the Release (RFC 2822 date). */
  date?: string;
  validUntil?: string;
  /** The index's path inside the release (`main/binary-amd64/Packages`) and whether the Release's SHA256 list gives
   * exactly the decompressed index's hash and size: the bytes read are the ones the Release describes. */
  indexPath?: string;
  listed: boolean;
  /** ISO 8601 forms of Date and Valid-Until, when they parse. */
  dateIso?: string;
  validUntilIso?: string;
  /** The InRelease's OpenPGP signature checked by gpgv against the keyring: "good", "bad"; "unsigned" for a plain
   * Release (its detached Release.gpg is not read); "not-checked" when gpgv or the keyring is absent. */
  signature: "good" | "bad" | "unsigned" | "not-checked";
}

/** Which advisory data a scan used: recorded with the scan, compared to decide whether a posture is stale. */
export interface DataSourceDescriptor {
  kind: "apt-packages-index";
  path: string;
  /** sha256 of the file's bytes as stored (compressed or not). */
  sha256: string;
  bytes: number;
  /** sha256 and size of the decompressed index (what the Release lists). */
  contentSha256: string;
  contentBytes: number;
  packages: number;
  release?: ReleaseInfo;
}

const sha256 = (b: Buffer | string): string => createHash("sha256").update(b).digest("hex");

const SIGNED_HEADER = "-----BEGIN PGP SIGNED MESSAGE-----\n";
const isClearSigned = (bytes: Buffer): boolean => bytes.subarray(0, SIGNED_HEADER.length).toString("latin1") === SIGNED_HEADER;

/**
 * The text of a Release or an InRelease (the clear-signed body, dash-escaping undone). The body read is exactly
 * the one the signature covers: anything after the signature, or a second armoured block inside, is refused (the
 * shape of apt's own InRelease checks, so a verified signature cannot vouch for other text).
 */
export function releaseBody(bytes: Buffer, source: string): string {
  const text = bytes.toString("latin1");
  if (!text.startsWith(SIGNED_HEADER)) return text;
  const headerEnd = text.indexOf("\n\n");
  const sig = text.indexOf("\n-----BEGIN PGP SIGNATURE-----\n");
  if (headerEnd < 0 || sig < headerEnd) throw new VigilError("VIGIL_BAD_REQUEST", `Cannot parse ${source}: a clear-signed message without its body or signature`, { field: source });
  const end = text.indexOf("\n-----END PGP SIGNATURE-----", sig);
  if (end < 0 || !/^\n?$/.test(text.slice(end + "\n-----END PGP SIGNATURE-----".length))) throw new VigilError("VIGIL_BAD_REQUEST", `Cannot parse ${source}: text after the signature, or no end of signature`, { field: source });
  if (text.slice(headerEnd, sig).includes("\n-----BEGIN PGP")) throw new VigilError("VIGIL_BAD_REQUEST", `Cannot parse ${source}: a second armoured block inside the signed text`, { field: source });
  return text
    .slice(headerEnd + 2, sig)
    .split("\n")
    .map((l) => (l.startsWith("- ") ? l.slice(2) : l))
    .join("\n");
}

/** Reads a Release/InRelease and what it says about the index at `indexPath` (decompressed hash and size). */
export function readRelease(path: string, indexPath: string | undefined, content: { sha256: string; bytes: number } | undefined): ReleaseInfo {
  const bytes = readBounded(path, MAX_RELEASE_BYTES, "release file");
  const source = basename(path);
  const stanzas = parseDeb822(releaseBody(bytes, source), source);
  const s = stanzas[0];
  if (!s || stanzas.length !== 1) throw new VigilError("VIGIL_BAD_REQUEST", `Cannot parse ${source}: a Release holds exactly one stanza, found ${stanzas.length}`, { field: source });
  const info: ReleaseInfo = { path, sha256: sha256(bytes), listed: false, signature: isClearSigned(bytes) ? "not-checked" : "unsigned" };
  for (const [k, f] of [["origin", "Origin"], ["suite", "Suite"], ["codename", "Codename"], ["date", "Date"], ["validUntil", "Valid-Until"]] as const) {
    const v = fieldValue(s, f);
    if (v !== undefined) info[k] = v;
  }
  for (const [from, to] of [["date", "dateIso"], ["validUntil", "validUntilIso"]] as const) {
    const ms = info[from] !== undefined && info[from].length <= 64 ? Date.parse(info[from]) : NaN;
    if (Number.isFinite(ms)) info[to] = new Date(ms).toISOString();
  }
  if (indexPath !== undefined) {
    info.indexPath = indexPath;
    if (content) {
      for (const line of (fieldValue(s, "SHA256") ?? "").split("\n")) {
        const [hash, size, p] = line.trim().split(/ +/);
        if (p === indexPath && hash === content.sha256 && Number(size) === content.bytes) info.listed = true;
      }
    }
  }
  return info;
}

/**
 * The Release of an apt list file: `host_path_dists_SUITE_COMP_binary-ARCH_Packages.lz4` sits beside
 * `host_path_dists_SUITE_InRelease` (or `_Release`). The suite may itself hold "_" (apt writes "/" as "_"), so
 * each split is tried, longest suite first. Undefined when none is found.
 */
export function findRelease(indexFile: string): { path: string; indexPath: string } | undefined {
  const name = basename(indexFile).replace(COMPRESSED, "");
  const d = name.indexOf("_dists_");
  if (d < 0) return undefined;
  const rest = name.slice(d + "_dists_".length);
  const cuts: number[] = [];
  for (let i = rest.indexOf("_"); i >= 0; i = rest.indexOf("_", i + 1)) cuts.push(i);
  for (const cut of cuts.reverse()) {
    for (const rel of ["InRelease", "Release"]) {
      const p = join(dirname(indexFile), `${name.slice(0, d)}_dists_${rest.slice(0, cut)}_${rel}`);
      if (existsSync(p)) return { path: p, indexPath: rest.slice(cut + 1).replaceAll("_", "/") };
    }
  }
  return undefined;
}

/**
 * Loads an index file (compressed or not), parses it, and describes it. The Release beside it, when there is one,
 * is read too; `release` overrides where to find it.
 */
export async function loadPackagesIndex(path: string, opts: { limits?: Deb822Limits; release?: { path: string; indexPath: string }; keyring?: string } = {}): Promise<{ index: PackagesIndex; descriptor: DataSourceDescriptor }> {
  const limits = opts.limits ?? DEB822_LIMITS;
  const raw = readBounded(path, MAX_INDEX_FILE_BYTES, "index");
  const content = COMPRESSED.test(path) ? await decompressBytes(raw, COMPRESSED.exec(path)![0], limits.maxBytes, path) : raw;
  const index = parsePackagesIndex(content, basename(path), limits);
  const contentSha256 = sha256(content);
  const descriptor: DataSourceDescriptor = { kind: "apt-packages-index", path, sha256: sha256(raw), bytes: raw.length, contentSha256, contentBytes: content.length, packages: index.size };
  const rel = opts.release ?? findRelease(path);
  if (rel) {
    const info = readRelease(rel.path, rel.indexPath, { sha256: contentSha256, bytes: content.length });
    if (info.signature === "not-checked") info.signature = await verifyReleaseSignature(readBounded(rel.path, MAX_RELEASE_BYTES, "release file"), opts.keyring ?? DEBIAN_KEYRING, info.sha256);
    descriptor.release = info;
  }
  return { index, descriptor };
}

/** Debian's archive keyring (package debian-archive-keyring, installed with apt). */
export const DEBIAN_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg";
const GPGV = "/usr/bin/gpgv";

/**
 * Checks a clear-signed InRelease with gpgv against `keyring`. The bytes checked are the ones hashed in the
 * descriptor (`expectSha256`): they are written to a private file first, so a file replaced meanwhile cannot pass.
 */
export async function verifyReleaseSignature(bytes: Buffer, keyring: string, expectSha256: string): Promise<"good" | "bad" | "not-checked"> {
  if (sha256(bytes) !== expectSha256) return "bad"; // the file changed between the two reads
  if (!existsSync(GPGV) || !existsSync(keyring)) return "not-checked";
  const dir = mkdtempSync(join(tmpdir(), "vigil-release-"));
  try {
    const file = join(dir, "InRelease");
    writeFileSync(file, bytes, { mode: 0o600 });
    // Any failure of gpgv (a bad signature, an unknown key, a timeout) is "bad".
    return await runCommand(GPGV, ["--quiet", "--keyring", keyring, file], { timeoutMs: 10_000, maxOutputBytes: 1 << 20 }).then(
      () => "good" as const,
      () => "bad" as const,
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
