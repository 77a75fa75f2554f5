/**
 * Signature scan of a dormant guest's files against YARA rules (issue 13, item 4; docs/transience.md "Signature
 * scan"). The rules are compiled by YARA-X (yara-engine.ts: a Rust engine behind N-API); Debian's `yara` 4.2 is the
 * cross-check in the tests. The files come from a `ScanSource` (the ext2/3/4 reader over a qcow2 chain for a real
 * image, a host directory in tests), so this module never touches a guest file system itself.
 *
 * Why whole files: a YARA rule is a condition over one file (`filesize`, `uint16(0)`, patterns anywhere in it), so
 * chunked scanning would change what rules mean. Instead each file is read whole up to `maxFileBytes`; larger files
 * are skipped and listed with the reason, as Trivy and ClamAV do with their size limits. The scan as a whole is
 * bounded by a time budget, a byte budget, a file count and a finding count; hitting one ends the scan with
 * `complete: false` and the reason, never a partial answer that looks whole.
 */
import { createHash } from "node:crypto";
import { compileYara, type YaraRules } from "./yara-engine.ts";
import { VigilError, messageOf, q } from "../errors.ts";

/** One file offered to the scanner. `read` returns the whole content (at most `size` bytes). */
export interface ScanFile {
  /** The path inside the guest file system, absolute ("/usr/bin/x"). */
  readonly path: string;
  readonly size: number;
  read(): Buffer;
}

/**
 * Where the files come from. `files()` yields regular files only; it is the source's job to bound its own walk
 * (entries, depth) and to name an error when the guest's structures are malformed.
 */
export interface ScanSource {
  readonly name: string;
  files(): Iterable<ScanFile>;
}

export interface ScanLimits {
  /** Files larger than this are skipped (listed in `skipped`). */
  maxFileBytes: number;
  /** The scan stops once this many bytes were scanned. */
  maxTotalBytes: number;
  /** The scan stops after this many milliseconds (checked between files). */
  budgetMs: number;
  /** The scan stops after this many files (scanned or skipped). */
  maxFiles: number;
  /** At most this many findings are kept; the scan stops when it is reached. */
  maxFindings: number;
  /** At most this many matches per pattern are reported in one file (YARA-X stops counting there). */
  maxMatchesPerPattern: number;
}

export const DEFAULT_SCAN_LIMITS: ScanLimits = {
  maxFileBytes: 64 * 1024 * 1024,
  maxTotalBytes: 16 * 1024 * 1024 * 1024,
  budgetMs: 10 * 60_000,
  maxFiles: 2_000_000,
  maxFindings: 10_000,
  maxMatchesPerPattern: 16,
};

/** One pattern of one rule matched in one file. */
export interface SignatureFinding {
  path: string;
  rule: string;
  namespace: string;
  tags: string[];
  /** The rule's metadata (e.g. severity, description), as the rule author wrote it. */
  meta: Record<string, unknown>;
  /** The pattern identifier (`$a`), and where it matched. */
  pattern: string;
  offset: number;
  length: number;
  /** Up to 32 bytes of what matched, hex: evidence without carrying a guest's file around. */
  excerptHex: string;
}

export interface ScanReport {
  source: string;
  rulesSha256: string;
  findings: SignatureFinding[];
  /** Rules that matched by condition only (no pattern, e.g. `filesize > 1MB`), one entry per file and rule. */
  conditionMatches: { path: string; rule: string; namespace: string }[];
  scannedFiles: number;
  scannedBytes: number;
  skipped: { path: string; reason: string }[];
  complete: boolean;
  /** Why the scan stopped early, when it did. */
  stoppedBecause?: string;
  elapsedMs: number;
}

/** Rules compiled once, for many scans. */
export interface CompiledRules {
  readonly sha256: string;
  readonly engine: YaraRules;
}

/** Largest rule source accepted (rule sets of tens of thousands of rules are a few MiB). */
export const MAX_RULES_BYTES = 16 * 1024 * 1024;
/** At most this many skipped files are listed (the count goes on). */
const MAX_SKIPPED_LISTED = 1000;
const EXCERPT_BYTES = 32;

/**
 * Compiles YARA rules. A rule set that does not compile is refused with YARA-X's own message (it names the line
 * and column). The `console` module is banned: rules must not write to the daemon's output.
 */
export function compileRules(source: string, field = "rules"): CompiledRules {
  if (Buffer.byteLength(source) > MAX_RULES_BYTES) throw new VigilError("VIGIL_BAD_REQUEST", `The YARA rules are larger than ${MAX_RULES_BYTES} bytes`, { field });
  let engine: YaraRules;
  try {
    engine = compileYara(source, {
      bannedModules: [{ name: "console", errorTitle: "console is not allowed", errorMessage: "vigil does not let rules write to its output" }],
      errorOnSlowPattern: true,
    });
  } catch (err) {
    throw new VigilError("VIGIL_BAD_REQUEST", `The YARA rules do not compile: ${messageOf(err).slice(0, 2000)}`, { field, cause: err });
  }
  return { sha256: createHash("sha256").update(source).digest("hex"), engine };
}

function checkLimits(l: ScanLimits): void {
  for (const [k, v] of Object.entries(l)) {
    if (!Number.isSafeInteger(v) || v < 1) throw new VigilError("VIGIL_BAD_REQUEST", `Scan limit ${k} must be a positive integer, not ${q(v)}`, { field: k });
  }
}

/** Scans every file of `source` against `rules` within `limits`. Errors of the source end the scan (thrown). */
export function scanSignatures(rules: CompiledRules, source: ScanSource, limits: ScanLimits = DEFAULT_SCAN_LIMITS, now: () => number = () => performance.now()): ScanReport {
  checkLimits(limits);
  rules.engine.setMaxMatchesPerPattern(limits.maxMatchesPerPattern);
  const t0 = now();
  const report: ScanReport = { source: source.name, rulesSha256: rules.sha256, findings: [], conditionMatches: [], scannedFiles: 0, scannedBytes: 0, skipped: [], complete: true, elapsedMs: 0 };
  let seen = 0;
  let skippedCount = 0;
  const stop = (why: string) => {
    report.complete = false;
    report.stoppedBecause = why;
  };
  const skip = (path: string, reason: string) => {
    skippedCount++;
    if (report.skipped.length < MAX_SKIPPED_LISTED) report.skipped.push({ path, reason });
  };
  for (const file of source.files()) {
    if (now() - t0 > limits.budgetMs) {
      stop(`the time budget of ${limits.budgetMs} ms ran out`);
      break;
    }
    if (++seen > limits.maxFiles) {
      stop(`more than ${limits.maxFiles} files`);
      break;
    }
    if (file.size > limits.maxFileBytes) {
      skip(file.path, `larger than ${limits.maxFileBytes} bytes (${file.size})`);
      continue;
    }
    if (report.scannedBytes + file.size > limits.maxTotalBytes) {
      stop(`the byte budget of ${limits.maxTotalBytes} bytes ran out`);
      break;
    }
    const data = file.read();
    if (data.length > file.size) throw new VigilError("VIGIL_BAD_REQUEST", `The scan source returned ${data.length} bytes for ${q(file.path)}, which claims ${file.size}`);
    report.scannedFiles++;
    report.scannedBytes += data.length;
    for (const m of rules.engine.scan(data)) {
      if (m.matches.length === 0) report.conditionMatches.push({ path: file.path, rule: m.ruleIdentifier, namespace: m.namespace });
      for (const p of m.matches) {
        if (report.findings.length >= limits.maxFindings) break;
        // YARA-X's offsets come from the engine: checked against the buffer before they are used.
        const offset = Math.max(0, Math.min(p.offset, data.length));
        const end = Math.min(data.length, offset + Math.max(0, p.length));
        report.findings.push({
          path: file.path,
          rule: m.ruleIdentifier,
          namespace: m.namespace,
          tags: [...m.tags],
          meta: { ...(m.meta as Record<string, unknown>) },
          pattern: p.identifier,
          offset,
          length: end - offset,
          excerptHex: data.subarray(offset, Math.min(end, offset + EXCERPT_BYTES)).toString("hex"),
        });
      }
    }
    if (report.findings.length >= limits.maxFindings) {
      stop(`${limits.maxFindings} findings (the limit)`);
      break;
    }
  }
  if (skippedCount > report.skipped.length) report.skipped.push({ path: "…", reason: `${skippedCount - report.skipped.length} more skipped files not listed` });
  report.elapsedMs = Math.round(now() - t0);
  return report;
}
