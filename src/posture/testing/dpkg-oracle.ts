/**
 * dpkg itself as the oracle for the posture tests: batches of comparisons and validity checks run through ONE
 * shell loop (one `sh` for thousands of `dpkg --compare-versions` calls), and the real apt lists of this machine
 * as a source of real versions.
 */
import { execFileSync } from "node:child_process";
import { mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

export const APT_LISTS = "/var/lib/apt/lists";
export const APT_HELPER = "/usr/lib/apt/apt-helper";

function withTemp<T>(f: (dir: string) => T): T {
  const dir = mkdtempSync(join(tmpdir(), "vigil-dpkg-oracle-"));
  try {
    return f(dir);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** dpkg's verdict on each pair: -1, 0 or 1. Versions must hold no white space and not start with "-". */
export function dpkgCompareMany(pairs: ReadonlyArray<readonly [string, string]>): Array<-1 | 0 | 1> {
  return withTemp((dir) => {
    const file = join(dir, "pairs");
    writeFileSync(file, pairs.map(([a, b]) => `${a}\t${b}\n`).join(""));
    const script = `while IFS='\t' read -r a b; do
  if dpkg --compare-versions "$a" lt "$b" 2>/dev/null; then echo -1;
  elif dpkg --compare-versions "$a" eq "$b" 2>/dev/null; then echo 0;
  else echo 1; fi
done < "$1"`;
    const out = execFileSync("sh", ["-c", script, "sh", file], { encoding: "utf8", maxBuffer: 64 << 20 });
    return out.trim().split("\n").map((l) => Number(l) as -1 | 0 | 1);
  });
}

/** dpkg's verdict on each version: "ok", "warning" (accepted with a warning) or "error" (refused). */
export function dpkgValidityMany(versions: readonly string[]): Array<"ok" | "warning" | "error"> {
  return withTemp((dir) => {
    const file = join(dir, "versions");
    writeFileSync(file, versions.map((v) => `${v}\n`).join(""));
    const script = `while IFS= read -r v; do
  err=$(dpkg --compare-versions "$v" eq "$v" 2>&1 >/dev/null); rc=$?
  if [ $rc -eq 2 ]; then echo error; elif [ -n "$err" ]; then echo warning; else echo ok; fi
done < "$1"`;
    const out = execFileSync("sh", ["-c", script, "sh", file], { encoding: "utf8", maxBuffer: 64 << 20 });
    return out.trim().split("\n") as Array<"ok" | "warning" | "error">;
  });
}

/** The apt list files whose name ends with `suffix` (e.g. "_Packages.lz4"). */
export function aptListFiles(suffix: string): string[] {
  return readdirSync(APT_LISTS).filter((f) => f.endsWith(suffix)).map((f) => join(APT_LISTS, f));
}

/** The security suite's Packages index on this machine. */
export function securityPackagesFile(): string {
  const f = aptListFiles("_Packages.lz4").find((p) => p.includes("security"));
  if (!f) throw new Error("no security Packages index under /var/lib/apt/lists (run set-up: apt-get update)");
  return f;
}

/** Every `Version:` value of every Packages index here (decompressed by apt-helper), deduplicated. */
export function realVersions(): string[] {
  const all = new Set<string>();
  for (const f of aptListFiles("_Packages.lz4")) {
    const text = execFileSync(APT_HELPER, ["cat-file", f], { encoding: "utf8", maxBuffer: 256 << 20 });
    for (const m of text.matchAll(/^Version: (.+)$/gm)) all.add(m[1]!);
  }
  return [...all];
}
