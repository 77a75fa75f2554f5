import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import fc from "fast-check";
import { runCommand } from "../util/run-command.ts";
import { compileRules, DEFAULT_SCAN_LIMITS, scanSignatures, type ScanSource } from "./signature-scan.ts";
import { hostDirSource } from "./testing/host-dir-source.ts";

const RULES = `
rule planted_marker : test {
  meta: severity = "high" description = "the marker the tests plant"
  strings: $m = "vigil-planted-marker-7f3a"
  condition: $m
}
rule elf_with_marker {
  strings: $m = "vigil-planted-marker-7f3a"
  condition: uint32(0) == 0x464c457f and $m
}
rule hex_bytes {
  strings: $h = { DE AD BE EF 00 ?? 42 }
  condition: $h
}
`;

function tree(t: { after(fn: () => void): void }): string {
  const dir = mkdtempSync(join(tmpdir(), "vigil-yara-"));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

const source = (files: { path: string; data: Buffer }[]): ScanSource => ({
  name: "memory",
  *files() {
    for (const f of files) yield { path: f.path, size: f.data.length, read: () => f.data };
  },
});

test("a planted file is found with its path, rule, pattern and offset; clean files are not", (t) => {
  const dir = tree(t);
  mkdirSync(join(dir, "opt/planted"), { recursive: true });
  mkdirSync(join(dir, "etc"));
  writeFileSync(join(dir, "etc/motd"), "welcome\n");
  const planted = Buffer.concat([Buffer.alloc(5000, 0x20), Buffer.from("vigil-planted-marker-7f3a"), Buffer.from("tail")]);
  writeFileSync(join(dir, "opt/planted/x.txt"), planted);
  // A symlink to the planted file is not a second file: sources yield regular files only.
  symlinkSync("/opt/planted/x.txt", join(dir, "etc/link"));
  const r = scanSignatures(compileRules(RULES), hostDirSource(dir));
  assert.equal(r.complete, true);
  assert.equal(r.scannedFiles, 2);
  assert.deepEqual(r.findings.map((f) => [f.path, f.rule, f.pattern, f.offset, f.length]), [["/opt/planted/x.txt", "planted_marker", "$m", 5000, 25]]);
  assert.deepEqual(r.findings[0]!.tags, ["test"]);
  assert.equal(r.findings[0]!.meta.severity, "high");
  assert.equal(Buffer.from(r.findings[0]!.excerptHex, "hex").toString(), "vigil-planted-marker-7f3a");
  assert.match(r.rulesSha256, /^[0-9a-f]{64}$/);
});

test("the findings agree with Debian's yara -r -s on a generated tree", async (t) => {
  const dir = tree(t);
  const rulesFile = join(dir, "..", `${dir.split("/").pop()}.yar`);
  writeFileSync(rulesFile, RULES);
  t.after(() => rmSync(rulesFile, { force: true }));
  const root = join(dir, "root");
  // Deterministic pseudo-random tree: some files carry the marker or the hex pattern at known places, one is an ELF.
  let seed = 12345;
  const rnd = () => (seed = (seed * 1103515245 + 12345) & 0x7fffffff) / 0x7fffffff;
  for (let d = 0; d < 6; d++) {
    mkdirSync(join(root, `d${d}`, "sub"), { recursive: true });
    for (let i = 0; i < 8; i++) {
      const parts: Buffer[] = [Buffer.from(Array.from({ length: Math.floor(rnd() * 3000) }, () => Math.floor(rnd() * 256)))];
      if (rnd() < 0.3) parts.push(Buffer.from("vigil-planted-marker-7f3a"));
      if (rnd() < 0.3) parts.push(Buffer.from([0xde, 0xad, 0xbe, 0xef, 0, Math.floor(rnd() * 256), 0x42]));
      if (rnd() < 0.2) parts.unshift(Buffer.from([0x7f, 0x45, 0x4c, 0x46]));
      writeFileSync(join(root, `d${d}`, i % 2 ? "sub" : "", `f${i}.bin`), Buffer.concat(parts));
    }
  }
  const ours = scanSignatures(compileRules(RULES), hostDirSource(root));
  const got = new Set(ours.findings.map((f) => `${f.rule} ${f.path} ${f.offset} ${f.pattern}`));
  const out = await runCommand("yara", ["-r", "-s", rulesFile, root], { timeoutMs: 60_000 });
  const want = new Set<string>();
  let current = "";
  for (const line of out.stdout.split("\n")) {
    const rule = /^(\w+) (\/.*)$/.exec(line);
    if (rule) current = `${rule[1]} ${rule[2]!.slice(root.length)}`;
    const hit = /^0x([0-9a-f]+):(\$\w+):/.exec(line);
    if (hit) want.add(`${current.split(" ")[0]} ${current.split(" ")[1]} ${parseInt(hit[1]!, 16)} ${hit[2]}`);
  }
  assert.ok(want.size >= 10, `yara found ${want.size} matches in the generated tree`);
  assert.deepEqual([...got].sort(), [...want].sort());
});

test("limits: large files are skipped and listed; budgets end the scan as incomplete, never silently", () => {
  const rules = compileRules(RULES);
  const marker = Buffer.from("vigil-planted-marker-7f3a");
  const files = [
    { path: "/a", data: Buffer.concat([Buffer.alloc(10), marker]) },
    { path: "/big", data: Buffer.concat([Buffer.alloc(2000), marker]) },
    { path: "/b", data: marker },
    { path: "/c", data: marker },
  ];
  const limits = { ...DEFAULT_SCAN_LIMITS, maxFileBytes: 1000 };
  const r = scanSignatures(rules, source(files), limits);
  assert.equal(r.complete, true);
  assert.deepEqual(r.skipped, [{ path: "/big", reason: "larger than 1000 bytes (2025)" }]);
  assert.deepEqual(r.findings.map((f) => f.path), ["/a", "/b", "/c"]);

  const byFindings = scanSignatures(rules, source(files), { ...limits, maxFindings: 2 });
  assert.equal(byFindings.complete, false);
  assert.match(byFindings.stoppedBecause!, /2 findings/);
  assert.equal(byFindings.findings.length, 2);

  const byBytes = scanSignatures(rules, source(files), { ...limits, maxTotalBytes: 40 });
  assert.equal(byBytes.complete, false);
  assert.match(byBytes.stoppedBecause!, /byte budget/);
  assert.equal(byBytes.scannedFiles, 1);

  let clock = 0;
  const byTime = scanSignatures(rules, { name: "slow", *files() { for (const f of files) { clock += 600; yield { path: f.path, size: f.data.length, read: () => f.data }; } } }, { ...limits, budgetMs: 1000 }, () => clock);
  assert.equal(byTime.complete, false);
  assert.match(byTime.stoppedBecause!, /time budget of 1000 ms/);
  assert.equal(byTime.scannedFiles, 1);

  assert.throws(() => scanSignatures(rules, source(files), { ...limits, budgetMs: 0 }), /Scan limit budgetMs must be a positive integer/);
  // A source whose read returns more than the size it announced is refused (its size decided the budgets).
  assert.throws(() => scanSignatures(rules, { name: "liar", *files() { yield { path: "/x", size: 1, read: () => marker }; } }), /returned 25 bytes for "\/x", which claims 1/);
});

test("rules that do not compile, or use the console module, are refused with the engine's reason", () => {
  assert.throws(() => compileRules("rule x { strings: $a = \"q\" condition: $b }"), (e: Error & { code?: string; field?: string }) => e.code === "VIGIL_BAD_REQUEST" && e.field === "rules" && /unknown pattern `\$b`/.test(e.message) && /line:1:/.test(e.message));
  assert.throws(() => compileRules('import "console" rule x { condition: console.log("hi") }'), /do not compile.*console/s);
  assert.throws(() => compileRules("x".repeat(16 * 1024 * 1024 + 1)), /larger than 16777216 bytes/);
});

test("property: every planted marker is reported at the offset it was planted, and only there", () => {
  const rules = compileRules(RULES);
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 4096 }), fc.array(fc.nat(4096), { maxLength: 5 }), (noise, places) => {
      const data = Buffer.from(noise.map((b) => (b === 0x76 ? 0x77 : b))); // no accidental "v" starts a marker
      const marker = Buffer.from("vigil-planted-marker-7f3a");
      const offsets: number[] = [];
      let buf = data;
      for (const p of [...new Set(places)].sort((a, b) => a - b)) {
        const at = Math.min(p, buf.length);
        if (offsets.length > 0 && at < offsets[offsets.length - 1]! + marker.length) continue;
        buf = Buffer.concat([buf.subarray(0, at), marker, buf.subarray(at + marker.length)]);
        offsets.push(at);
      }
      const r = scanSignatures(rules, source([{ path: "/f", data: buf }]));
      const found = r.findings.filter((f) => f.rule === "planted_marker").map((f) => f.offset);
      assert.deepEqual(found, offsets.slice(0, DEFAULT_SCAN_LIMITS.maxMatchesPerPattern));
    }),
    { numRuns: 200 },
  );
});
