/**
 * The offline ("loopback") scan of a dormant VM's disks (issue 13, item 2; docs/transience.md "Offline scan"):
 * without booting the guest and without mounting anything on the host kernel. Every layer is vigil's own bounded
 * reader over the one before it: the qcow2 chain (storage/chain.ts) → the partition table (guestfs/partitions.ts)
 * → ext2/3/4 (guestfs/ext4/) → the dpkg database and os-release (posture/dpkg-status.ts) and every regular file
 * for the signature scan (posture/signature-scan.ts).
 *
 * Synchronous and CPU-bound: it runs in its own process (scan-child.ts), never on the daemon's event loop, so a
 * hostile image that finds a bug in a parser takes down a child with a deadline, not the daemon.
 */
import { openChain, type ImageChain } from "../storage/chain.ts";
import type { BlockReader } from "../storage/block-reader.ts";
import { readPartitions } from "../guestfs/partitions.ts";
import { Ext4 } from "../guestfs/ext4/ext4.ts";
import { VigilError, messageOf } from "../errors.ts";
import { parseDpkgStatus, type InstalledPackage } from "./dpkg-status.ts";
import { scanSignatures, type CompiledRules, type ScanLimits, type ScanReport, type ScanSource } from "./signature-scan.ts";

/** Where a guest keeps what the scan reads. */
export const DPKG_STATUS = "/var/lib/dpkg/status";
export const OS_RELEASE = ["/etc/os-release", "/usr/lib/os-release"];
/** A dpkg status of tens of thousands of packages is a few MiB; os-release is a few hundred bytes. */
const MAX_STATUS_BYTES = 64 * 1024 * 1024;
const MAX_OS_RELEASE_BYTES = 64 * 1024;
/** File systems tried per disk (partitions, or the whole disk without a table). */
const MAX_FILESYSTEMS = 16;

export interface OsRelease {
  id?: string;
  versionId?: string;
  prettyName?: string;
}

export interface DormantFilesystem {
  /** "disk0 partition 1", "disk1 (whole disk)". */
  where: string;
  fs: Ext4;
}

export interface OfflineScanInput {
  /** The VM's disk images (top layers), in spec order. */
  disks: { name: string; path: string }[];
  /** Directories every layer of every chain must lie in (vigil's VM and image dirs). */
  roots: string[];
  rules: CompiledRules;
  signatureLimits: ScanLimits;
}

export interface OfflineScanResult {
  root: string | null;
  os: OsRelease | null;
  installed: InstalledPackage[];
  /** Time from opening the disks to the parsed package list (the goal's "packages" part). */
  packagesMs: number;
  signatures: ScanReport | null;
  notes: string[];
}

/** `KEY=value` lines of os-release(5): quoted or bare values, comments; bounded by the caller's byte limit. */
export function parseOsRelease(text: string): OsRelease {
  const fields = new Map<string, string>();
  for (const line of text.split("\n").slice(0, 1000)) {
    const m = /^([A-Z][A-Z0-9_]{0,63})=(.*)$/.exec(line.trim());
    if (!m) continue;
    let v = m[2]!;
    if (/^".*"$|^'.*'$/.test(v)) v = v.slice(1, -1).replace(/\\(["'$`\\])/g, "$1");
    fields.set(m[1]!, v.slice(0, 256));
  }
  const out: OsRelease = {};
  if (fields.has("ID")) out.id = fields.get("ID")!;
  if (fields.has("VERSION_ID")) out.versionId = fields.get("VERSION_ID")!;
  if (fields.has("PRETTY_NAME")) out.prettyName = fields.get("PRETTY_NAME")!;
  return out;
}

/** Every ext2/3/4 file system on one disk: each partition, or the whole disk when it has no partition table. */
export function filesystemsOf(diskName: string, disk: BlockReader, notes: string[]): DormantFilesystem[] {
  const out: DormantFilesystem[] = [];
  let candidates: { where: string; reader: BlockReader }[];
  try {
    const table = readPartitions(disk);
    candidates =
      table.scheme === "none"
        ? [{ where: `${diskName} (whole disk)`, reader: disk }]
        : table.partitions.filter((p) => p.kind !== "extended").map((p) => ({ where: `${diskName} partition ${p.number}`, reader: p.reader }));
  } catch (err) {
    // A table that is there but invalid: the whole disk may still be a file system; say so.
    notes.push(`${diskName}: its partition table is invalid (${messageOf(err).slice(0, 200)}); tried the whole disk`);
    candidates = [{ where: `${diskName} (whole disk)`, reader: disk }];
  }
  for (const c of candidates.slice(0, MAX_FILESYSTEMS)) {
    try {
      out.push({ where: c.where, fs: Ext4.open(c.reader) });
    } catch (err) {
      notes.push(`${c.where}: not an ext2/3/4 file system vigil can read (${messageOf(err).slice(0, 200)})`);
    }
  }
  return out;
}

function exists(fs: Ext4, path: string): boolean {
  try {
    fs.lstat(path);
    return true;
  } catch {
    return false;
  }
}

/** Regular files of one file system, for the signature scan (symlinks are not followed; the walk is bounded). */
export function ext4Source(fs: Ext4, name: string, notes: string[], maxEntries = 1_000_000): ScanSource {
  return {
    name,
    *files() {
      const found: { path: string; ino: number; size: number }[] = [];
      const summary = fs.walk(
        "/",
        (e) => {
          if (e.type === "file") found.push({ path: e.path, ino: e.ino, size: e.size });
        },
        { maxEntries, skipUnreadable: true },
      );
      if (summary.truncated) notes.push(`${name}: the walk stopped after ${summary.visited} entries (the limit)`);
      for (const s of summary.skipped.slice(0, 20)) notes.push(`${name}: ${s.path} not read: ${s.reason}`);
      for (const f of found) yield { path: f.path, size: f.size, read: () => fs.readFile(f.ino, { maxBytes: f.size }) };
    },
  };
}

/** Scans the disks of a dormant VM. Throws a VigilError only when no disk can be opened at all. */
export function scanDormant(input: OfflineScanInput): OfflineScanResult {
  const notes: string[] = [];
  const chains: ImageChain[] = [];
  const t0 = performance.now();
  try {
    const filesystems: DormantFilesystem[] = [];
    for (const d of input.disks) {
      let chain: ImageChain;
      try {
        chain = openChain(d.path, { roots: input.roots });
      } catch (err) {
        notes.push(`${d.name}: cannot be read: ${messageOf(err).slice(0, 300)}`);
        continue;
      }
      chains.push(chain);
      filesystems.push(...filesystemsOf(d.name, chain, notes));
    }
    if (chains.length === 0) throw new VigilError("VIGIL_BAD_REQUEST", `Cannot scan: no disk of the VM could be read (${notes.join("; ").slice(0, 500)})`);
    // The root file system is the one with a dpkg database, else the one with an os-release.
    const root = filesystems.find((f) => exists(f.fs, DPKG_STATUS)) ?? filesystems.find((f) => OS_RELEASE.some((p) => exists(f.fs, p)));
    let os: OsRelease | null = null;
    let installed: InstalledPackage[] = [];
    if (root) {
      const rel = OS_RELEASE.find((p) => exists(root.fs, p));
      if (rel) os = parseOsRelease(root.fs.readFile(rel, { maxBytes: MAX_OS_RELEASE_BYTES, truncate: true }).toString("utf8"));
      if (exists(root.fs, DPKG_STATUS)) installed = parseDpkgStatus(root.fs.readFile(DPKG_STATUS, { maxBytes: MAX_STATUS_BYTES }), `${root.where}:${DPKG_STATUS}`);
      else notes.push(`${root.where}: no ${DPKG_STATUS}: not a dpkg-based system, no package data`);
      if (root.fs.needsRecovery) notes.push(`${root.where}: the journal holds transactions that were not replayed (the VM was not shut down cleanly): the newest writes may be missing`);
    } else {
      notes.push("no root file system found (no dpkg database, no os-release)");
    }
    const packagesMs = Math.round(performance.now() - t0);
    // Signatures: every file system, within one budget (the limits apply to the whole scan).
    let signatures: ScanReport | null = null;
    if (filesystems.length > 0) {
      const sources = filesystems.map((f) => ext4Source(f.fs, f.where, notes));
      const all: ScanSource = { name: sources.map((s) => s.name).join(", "), *files() { for (const s of sources) for (const f of s.files()) yield { ...f, path: filesystems.length > 1 ? `${s.name}:${f.path}` : f.path }; } };
      signatures = scanSignatures(input.rules, all, input.signatureLimits);
    }
    return { root: root?.where ?? null, os, installed, packagesMs, signatures, notes };
  } finally {
    for (const c of chains) {
      try {
        c.close();
      } catch (err) {
        notes.push(`closing a disk: ${messageOf(err)}`);
      }
    }
  }
}

