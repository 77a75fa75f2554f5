/** `vigil recording`: recordings of a VM's execution — list, show, replay, seek, bisect, delete, export (docs/recording.md). */
import type { Command } from "commander";
import { call, download } from "../client.ts";
import { printJson, printTable, withSpinner } from "../output.ts";
import { enc, positiveInt, writableOutput } from "./common.ts";

type Rec = Record<string, unknown> & { name: string; vm: string; state: string; durationMs: number | null; storedBytes: number | null; rawBytes: number | null; logKbps: number | null; rawKbps: number | null; instructions: number | null; generation: number; qemu: { version: string; sha256: string } };
type Replay = { recording: string; reachedIcount: number; targetIcount: number; verified: { serial: boolean; memory: boolean | null; deterministic: boolean } | null; serialBytes: number; serialTail: string; elapsedMs: number; speed: number | null };

const mib = (b: number | null) => (b === null ? "-" : `${(b / 1048576).toFixed(2)} MiB`);
const secs = (ms: number | null) => (ms === null ? "-" : `${(ms / 1000).toFixed(1)} s`);
const recPath = (name: string, rest = "") => `/v1/recordings/${enc(name)}${rest}`;

/** Prints a replay's outcome; a replay that is not the recording's execution exits 1. */
function printReplay(r: Replay, showSerial: boolean): void {
  if (showSerial) process.stdout.write(`${r.serialTail}\n----\n`);
  process.stdout.write(`Replayed ${r.recording} to instruction ${r.reachedIcount} of ${r.targetIcount} in ${secs(r.elapsedMs)}${r.speed !== null ? ` (${r.speed}× real time)` : ""}; ${r.serialBytes} bytes of serial output\n`);
  if (r.verified) {
    process.stdout.write(`  serial output: ${r.verified.serial ? "identical to the recording" : "DIFFERS from the recording"}\n  RAM at the end point: ${r.verified.memory === null ? "not comparable (the guest powered off: the replay pauses a few instructions earlier)" : r.verified.memory ? "identical (sha256)" : "DIFFERS"}\n`);
    if (!r.verified.deterministic) process.exitCode = 1;
  }
}

export function registerRecordings(program: Command): void {
  const rec = program.command("recording").description("Recordings of a VM's execution: replay, time travel, bisect");
  rec
    .command("list")
    .description("List recordings (of one VM with --vm)")
    .option("--vm <name>", "only this VM's")
    .option("--json", "machine-readable output")
    .action(async (o: { vm?: string; json?: boolean }) => {
      const r = await call<{ recordings: Rec[] }>("GET", `/v1/recordings${o.vm ? `?vm=${enc(o.vm)}` : ""}`);
      if (o.json) return printJson(r);
      printTable(
        r.recordings.map((x) => ({ ...x, duration: secs(x.durationMs), size: mib(x.storedBytes), rate: x.logKbps === null ? "-" : `${x.logKbps} kbit/s`, insns: x.instructions ?? "-" })),
        [["name", "NAME"], ["vm", "VM"], ["state", "STATE"], ["generation", "GEN"], ["duration", "DURATION"], ["size", "LOG"], ["rate", "LOG RATE"], ["insns", "INSTRUCTIONS"]],
      );
    });
  rec
    .command("show <recording>")
    .description("Show a recording: QEMU build, log, end point, files")
    .option("--serial", "print its serial transcript")
    .option("--json", "machine-readable output")
    .action(async (name: string, o: { serial?: boolean; json?: boolean }) => {
      type ShadowView = { state: string; checkedIcount: number; sweeps: number; lagMs: number | null; lagMedianMs: number | null; findings: { check: string; severity: string; icount: number }[]; error: string | null };
      const r = await call<Rec & { files: string[]; end: Record<string, unknown> | null; log: Record<string, unknown> | null; error: string | null; startedAt: string; shadow: ShadowView | null }>("GET", recPath(name));
      if (o.serial) {
        const s = await call<{ serial: string }>("GET", recPath(name, "/serial"));
        if (o.json) return printJson({ ...r, serial: s.serial });
        process.stdout.write(s.serial);
        return;
      }
      if (o.json) return printJson(r);
      const lines = [
        `Recording ${r.name} of VM ${r.vm} (generation ${r.generation}): ${r.state}${r.error ? ` — ${r.error}` : ""}`,
        `  started ${r.startedAt}, ${secs(r.durationMs)}; QEMU ${r.qemu.version} (sha256 ${r.qemu.sha256.slice(0, 16)}…)`,
        `  log: ${mib(r.storedBytes)} compressed (${r.logKbps ?? "-"} kbit/s), ${mib(r.rawBytes)} raw (${r.rawKbps ?? "-"} kbit/s)`,
        `  end point: ${r.end ? `instruction ${String(r.end.icount)} (${String(r.end.reason)}), RAM sha256 ${String(r.end.memorySha256).slice(0, 16)}…, ${String(r.end.serialBytes)} bytes of serial output` : "none"}`,
        ...(r.shadow
          ? [
              `  shadow: ${r.shadow.state}${r.shadow.error ? ` — ${r.shadow.error}` : ""}, checked to instruction ${r.shadow.checkedIcount} in ${r.shadow.sweeps} sweeps, lag ${r.shadow.lagMs ?? "-"} ms (median ${r.shadow.lagMedianMs ?? "-"} ms)`,
              ...r.shadow.findings.map((f) => `    ${f.severity} ${f.check} at instruction ${f.icount}`),
            ]
          : []),
        "  files:",
        ...r.files.map((f) => `    ${f}`),
      ];
      process.stdout.write(lines.join("\n") + "\n");
    });
  rec
    .command("replay <recording>")
    .description("Replay it in a jailed replica and check it is the same execution (serial output, RAM digest at its end)")
    .option("--until <point>", "stop at this instruction count or percentage (e.g. 50%) instead of the end")
    .option("--serial", "print the tail of the replayed serial output")
    .option("--json", "machine-readable output")
    .action(async (name: string, o: { until?: string; serial?: boolean; json?: boolean }) => {
      const r = await withSpinner(`Replaying ${name}`, call<Replay>("POST", recPath(name, "/replay"), o.until !== undefined ? { until: o.until } : {}));
      if (o.json) {
        if (r.verified && !r.verified.deterministic) process.exitCode = 1;
        return printJson(r);
      }
      printReplay(r, o.serial ?? false);
    });
  rec
    .command("seek <recording> <point>")
    .description("Replay to a point (instruction count or percentage) and show the serial output up to it")
    .option("--json", "machine-readable output")
    .action(async (name: string, point: string, o: { json?: boolean }) => {
      const r = await withSpinner(`Seeking ${name} to ${point}`, call<Replay>("POST", recPath(name, "/replay"), { until: point }));
      if (o.json) return printJson(r);
      printReplay(r, true);
    });
  rec
    .command("bisect <recording>")
    .description("Find the instruction window in which an introspection check first reports (\"when did the rootkit land?\")")
    .requiredOption("--check <check>", "the check, e.g. syscall-table")
    .option("--probes <n>", "probes per pass (2 passes)", positiveInt("--probes"), 12)
    .option("--json", "machine-readable output")
    .action(async (name: string, o: { check: string; probes: number; json?: boolean }) => {
      type B = { found: boolean; window: { from: number; to: number } | null; baselineAt: number | null; finding: { message: string; evidence: Record<string, unknown> } | null; serial: { before: string; during: string } | null; replays: number; probes: unknown[] };
      const r = await withSpinner(`Bisecting ${name} for ${o.check}`, call<B>("POST", recPath(name, "/bisect"), { check: o.check, probes: o.probes }));
      if (o.json) return printJson(r);
      if (!r.found || !r.window) {
        process.stdout.write(`${o.check} never reports in ${name} after the baseline at instruction ${r.baselineAt} (${r.probes.length} probes, ${r.replays} replay)\n`);
        return;
      }
      process.stdout.write(`${o.check} first reports between instructions ${r.window.from} and ${r.window.to} (${r.window.to - r.window.from} instructions; ${r.replays} replays)\n  ${r.finding?.message ?? ""}\n`);
      if (r.serial) process.stdout.write(`Serial output before the window:\n${r.serial.before}\n---- in the window:\n${r.serial.during}\n`);
    });
  rec
    .command("delete <recording>")
    .description("Delete a recording and its files")
    .option("--json", "machine-readable output")
    .action(async (name: string, o: { json?: boolean }) => {
      const r = await call<{ deleted: string; files: number }>("DELETE", recPath(name));
      if (o.json) return printJson(r);
      process.stdout.write(`Recording ${r.deleted} deleted (${r.files} files)\n`);
    });
  rec
    .command("export <recording>")
    .description("Export a complete recording as one tar (manifest with sha256s, log, serial transcript, disks)")
    .requiredOption("-o, --out <file>", "where to write the tar")
    .action(async (name: string, o: { out: string }) => {
      const out = writableOutput("--out", o.out);
      const bytes = await download(recPath(name, "/export"), {}, out, { method: "POST" });
      process.stdout.write(`Recording ${name} exported to ${out} (${(bytes / 1048576).toFixed(1)} MiB)\n`);
    });
}
