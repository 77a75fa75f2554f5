/**
 * Test support for the qcow2 reader: real images made by qemu-img and qemu-io (installed by set-up; a test that
 * needs them fails rather than skips without them), and the reference answers those tools give (`qemu-img map`,
 * `qemu-img convert -O raw`), normalised so that the reader's extents can be compared with them exactly.
 */
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { basename, dirname, join } from "node:path";
import type { Qcow2Extent } from "../qcow2.ts";

/** Runs a QEMU tool and returns its stdout; a failure throws with the tool's stderr. */
export function tool(cmd: "qemu-img" | "qemu-io", args: readonly string[]): string {
  return execFileSync(cmd, args, { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"], maxBuffer: 64 * 1024 * 1024 });
}

/** Creates a qcow2 image (`-o` options joined) and applies qemu-io commands to it, one run per command. */
export function makeImage(path: string, size: string, options: { o?: readonly string[]; backing?: string; backingFormat?: string; io?: readonly string[] } = {}): string {
  const args = ["create", "-q", "-f", "qcow2"];
  if (options.o?.length) args.push("-o", options.o.join(","));
  if (options.backing !== undefined) args.push("-b", options.backing, "-F", options.backingFormat ?? "qcow2");
  tool("qemu-img", [...args, path, ...(options.backing !== undefined && size === "" ? [] : [size])]);
  for (const c of options.io ?? []) io(path, c);
  return path;
}

/** One qemu-io command on an image (writes allowed); throws when qemu-io reports a failure. */
export function io(path: string, command: string): string {
  const out = tool("qemu-io", ["-f", "qcow2", "-c", command, path]);
  if (/error|failed|Parsing/i.test(out)) throw new Error(`qemu-io ${command}: ${out}`);
  return out;
}

export function snapshot(path: string, name: string): void {
  tool("qemu-img", ["snapshot", "-c", name, path]);
}

/** The whole disk as raw bytes according to qemu-img, from the active view or a snapshot's. */
export function qemuRaw(path: string, snapshotName?: string): Buffer {
  const dir = mkdtempSync(join(tmpdir(), "vigil-qcow2-raw-"));
  try {
    const out = join(dir, "out.raw");
    tool("qemu-img", ["convert", ...(snapshotName === undefined ? [] : ["-l", `snapshot.name=${snapshotName}`]), "-O", "raw", path, out]);
    return readFileSync(out);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

export interface QemuMapEntry {
  start: number;
  length: number;
  depth: number;
  present: boolean;
  zero: boolean;
  data: boolean;
  offset?: number;
}

/**
 * `qemu-img map` of the image's metadata alone. QEMU also asks the host file system where the image file has
 * holes and reports data clusters (or their tails) that sit in holes as zero; that is a property of the copy on
 * disk, not of the qcow2 metadata, so the map is taken of a copy without holes.
 */
export function qemuMap(path: string): QemuMapEntry[] {
  // Beside the original, so that a relative backing file name still resolves.
  const copy = join(dirname(path), `.dense-${basename(path)}`);
  try {
    execFileSync("cp", ["--sparse=never", path, copy]);
    return JSON.parse(tool("qemu-img", ["map", "--output=json", copy])) as QemuMapEntry[];
  } finally {
    rmSync(copy, { force: true });
  }
}

/** A status both sides can express: what this image holds for a range, and where its data is. */
export interface Comparable {
  start: number;
  length: number;
  kind: "data" | "zero" | "unallocated" | "compressed";
  offset?: number;
}

/**
 * qemu-img map reports through the backing chain; only depth 0 is this image. It prints host offsets for
 * preallocated zero clusters and unallocated subclusters too, which are not data, so offsets are compared for
 * data only; compressed clusters are data without an offset.
 */
export function fromQemu(entries: readonly QemuMapEntry[]): Comparable[] {
  return merge(
    entries.map((e) => {
      const kind: Comparable["kind"] = e.depth > 0 || !e.present ? "unallocated" : e.zero ? "zero" : e.offset === undefined ? "compressed" : "data";
      return { start: e.start, length: e.length, kind, ...(kind === "data" && e.offset !== undefined ? { offset: e.offset } : {}) };
    }),
  );
}

export function fromReader(extents: Iterable<Qcow2Extent>): Comparable[] {
  return merge(
    [...extents].map((e) => ({
      start: Number(e.offset),
      length: Number(e.length),
      kind: e.kind,
      ...(e.kind === "data" ? { offset: Number(e.hostOffset) } : {}),
    })),
  );
}

function merge(list: readonly Comparable[]): Comparable[] {
  const out: Comparable[] = [];
  for (const e of list) {
    const last = out[out.length - 1];
    if (
      last &&
      last.kind === e.kind &&
      last.start + last.length === e.start &&
      (last.offset === undefined ? e.offset === undefined : e.offset === last.offset + last.length)
    ) {
      last.length += e.length;
    } else {
      out.push({ ...e });
    }
  }
  return out;
}
