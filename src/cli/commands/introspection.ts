/** Looking into guests from outside: one `introspect` sweep, a continuous `watch`, and a watch's `findings`. */
import type { Command } from "commander";
import { ApiError, call, events } from "../client.ts";
import { printJson, printTable } from "../output.ts";
import { parseGuestViewEvery, parseInterval, parsePolicy, watchBody } from "../watch-args.ts";
import { positiveInt, vmPath } from "./common.ts";

/** Adds `introspect`, `watch` and `findings`. */
export function registerIntrospection(program: Command): void {
  program
    .command("introspect <vm>")
    .description("One sweep of the guest kernel from outside (needs the introspect grant): findings and the VMI view of processes and modules")
    .option("--carve", "also carve all of guest RAM for task and module structures (slower)")
    .option("--json", "machine-readable output")
    .action(async (name: string, o: { carve?: boolean; json?: boolean }) => {
      type Report = {
        sweep: number;
        findings: Finding[];
        processes: Array<{ pid: number; tgid: number; comm: string; state: string; sources: string[]; inGuestView?: boolean }>;
        modules: Array<{ name: string; sources: string[]; inGuestView?: boolean }>;
        kernel: { release: string; buildId: string | null; kaslrShift: string };
        durationMs: number;
        totalMs: number;
        baseline: { source: string; takenAt: string };
        guestView: { processes: number; modules: number | null } | null;
      };
      const r = await call<Report>("POST", vmPath(name, "/introspect"), { carve: o.carve ?? false });
      if (o.json) return printJson(r);
      const alarms = r.findings.filter((f) => f.severity !== "info");
      const leaders = r.processes.filter((p) => p.pid === p.tgid);
      process.stdout.write(`VM ${name}: kernel ${r.kernel.release} (build ${r.kernel.buildId ?? "unknown"}, KASLR shift ${r.kernel.kaslrShift})\n`);
      process.stdout.write(`sweep ${r.sweep} took ${r.durationMs.toFixed(1)} ms (${r.totalMs.toFixed(0)} ms with the guest's own view); baseline: ${r.baseline.source} at ${r.baseline.takenAt}\n`);
      process.stdout.write(`processes: ${leaders.length} (${r.processes.length} tasks)${r.guestView ? `, guest ps lists ${r.guestView.processes}` : ", guest view not taken"}; modules: ${r.modules.map((m) => m.name).join(" ") || "none"}\n`);
      if (alarms.length === 0) process.stdout.write("findings: none\n");
      else {
        process.stdout.write(`findings: ${alarms.length}\n`);
        printTable(
          alarms.map((f) => ({ ...f, where: evidenceLine(f.evidence) })),
          [
            ["severity", "SEVERITY"],
            ["check", "CHECK"],
            ["message", "MESSAGE"],
            ["where", "EVIDENCE"],
          ],
        );
      }
    });

  program
    .command("watch [vm]")
    .description("Watch a VM continuously (sweeps in the daemon, findings in the audit log) and follow its findings until Ctrl-C; the watch keeps running")
    .option("--interval <duration>", "time between sweeps, 250ms..1h, e.g. 1s, 500ms, 2m (a new watch: 1s; a running one keeps its own)", parseInterval)
    .option("--policy <policy>", "on a new serious finding: alert, pause (contain), or snapshot-and-pause (keep evidence) (a new watch: alert; a running one keeps its own)", parsePolicy)
    .option("--guest-view-every <n>", "ask the guest for its own ps every Nth sweep, 1..3600 (the lie detector; costs guest CPU) (a new watch: 1; a running one keeps its own)", parseGuestViewEvery)
    // --new-modules first: then --no-new-modules does not make the option default to true (unset keeps the watch's value).
    .option("--new-modules", "lift the no-new-modules policy (a new watch: modules may be loaded)")
    .option("--no-new-modules", 'a "no new modules" policy: any module loaded after the boot\'s baseline is a high finding (contained by --policy)')
    .option("--stop", "stop the VM's watch")
    .option("--list", "list the watches you may see")
    .option("--no-follow", "start or change the watch, then return")
    .option("--json", "machine-readable output (one JSON record per line when following)")
    .action(async (name: string | undefined, o: { interval?: number; policy?: string; guestViewEvery?: number; newModules?: boolean; stop?: boolean; list?: boolean; follow: boolean; json?: boolean }) => {
      if (o.list) {
        const { watches } = await call<{ watches: Watch[] }>("GET", "/v1/watches");
        if (o.json) return printJson(watches);
        printTable(
          watches.map((w) => ({ ...w, interval: `${w.intervalMs / 1000}s`, last: w.lastSweepAt ? `${w.lastSweepAt} (${w.lastSweepMs?.toFixed(1)} ms)` : "-", note: w.problem ?? "" })),
          [
            ["vm", "VM"],
            ["status", "STATUS"],
            ["interval", "INTERVAL"],
            ["policy", "POLICY"],
            ["sweeps", "SWEEPS"],
            ["last", "LAST SWEEP"],
            ["activeFindings", "ACTIVE"],
            ["note", "NOTE"],
          ],
        );
        return;
      }
      if (!name) throw new ApiError("VIGIL_BAD_REQUEST", "Name the VM to watch (or use --list)", 0, "vm");
      if (o.stop) {
        const r = await call<{ stopped: boolean }>("DELETE", vmPath(name, "/watch"));
        if (o.json) return printJson(r);
        process.stdout.write(r.stopped ? `Stopped watching ${name}\n` : `${name} was not watched\n`);
        return;
      }
      // Merge into the current watch: an option not given keeps its value; only a new watch gets the defaults.
      const existing = (await call<{ watch: Watch | null }>("GET", vmPath(name, "/findings?limit=1"))).watch;
      const change = watchBody({ ...(o.interval !== undefined ? { intervalMs: o.interval } : {}), ...(o.policy !== undefined ? { policy: o.policy } : {}), ...(o.guestViewEvery !== undefined ? { guestViewEvery: o.guestViewEvery } : {}), ...(o.newModules !== undefined ? { noNewModules: !o.newModules } : {}) }, existing);
      const watch = change ? await call<Watch>("PUT", vmPath(name, "/watch"), change) : existing!;
      const vm = await call<{ id: string }>("GET", vmPath(name));
      if (!o.follow) {
        if (o.json) return printJson(watch);
        process.stdout.write(`Watching ${name} every ${watch.intervalMs / 1000}s (policy ${watch.policy}${watch.noNewModules ? ", no new modules" : ""}, ${watch.status})\n`);
        return;
      }
      process.stderr.write(`Watching ${name} every ${watch.intervalMs / 1000}s (policy ${watch.policy}, ${watch.status}). Findings follow; Ctrl-C stops following, the watch keeps running (vigil watch ${name} --stop ends it).\n`);
      await events("/v1/events", (event, data) => {
        if (event !== "audit") return;
        const r = JSON.parse(data) as { time: string; action: string; result: string; target: { id: string | null }; details: Record<string, unknown> };
        if (r.target.id !== vm.id || !r.action.startsWith("ids.")) return;
        if (o.json) return void process.stdout.write(data + "\n");
        const d = r.details;
        if (r.action === "ids.finding") process.stdout.write(`${r.time}  ${String(d.severity).toUpperCase().padEnd(8)} ${String(d.check).padEnd(26)} ${String(d.message)}  ${evidenceLine((d.evidence ?? {}) as Record<string, unknown>)}\n`);
        else if (r.action === "ids.finding-change") process.stdout.write(`${r.time}  ${(d.change === "cleared" ? "CLEARED" : "CHANGED").padEnd(8)} ${String(d.check).padEnd(26)} ${String(d.message)}  ${evidenceLine((d.evidence ?? {}) as Record<string, unknown>)}\n`);
        else if (r.action === "ids.policy") process.stdout.write(`${r.time}  POLICY   ${String(d.policy)}: ${r.result === "ok" ? `paused ${String(d.paused)}${d.snapshot ? `, snapshot ${String(d.snapshot)}` : ""}` : `failed: ${String(d.error)}`}\n`);
        else process.stdout.write(`${r.time}  ${r.action}  ${JSON.stringify(d)}\n`);
      });
    });

  program
    .command("findings <vm>")
    .description("The alarms of a VM's watch: active ones, cleared ones (distinctly), each with every change, and the newest new-finding records")
    .option("-n, --limit <n>", "how many records", positiveInt("--limit"), 20)
    .option("--json", "machine-readable output (every alarm with its full history)")
    .action(async (name: string, o: { limit: number; json?: boolean }) => {
      type Change = { sweep: number; at: string; change: string; severity: string; message: string; what?: string[] };
      type Alarm = { state: "active" | "cleared"; finding: Finding; firstSweep: number; lastSeenSweep: number; raisedAt: string; clearedAt: string | null; history: Change[]; omittedChanges: number };
      const r = await call<{ watch: Watch | null; active: Finding[]; alarms?: Alarm[]; recent: Array<Finding & { time: string; sweep: number | null }> }>("GET", vmPath(name, `/findings?limit=${o.limit}`));
      if (o.json) return printJson(r);
      const alarms = r.alarms ?? [];
      const active = alarms.filter((a) => a.state === "active");
      const cleared = alarms.filter((a) => a.state === "cleared");
      process.stdout.write(r.watch ? `Watch: ${r.watch.status}, every ${r.watch.intervalMs / 1000}s, policy ${r.watch.policy}${r.watch.noNewModules ? ", no new modules" : ""}, ${r.watch.sweeps} sweeps, ${r.active.length} active, ${cleared.length} cleared\n` : `${name} is not watched\n`);
      const history = (a: Alarm) => [...(a.omittedChanges > 0 ? [`(${a.omittedChanges} earlier changes left out)`] : []), ...a.history.map((h) => `sweep ${h.sweep} ${h.change}${h.what ? ` (${h.what.join(", ")})` : ""}: ${h.severity}`)].join("; ");
      for (const [title, list] of [["ACTIVE", active], ["CLEARED", cleared]] as const) {
        if (list.length === 0) continue;
        process.stdout.write(`\n${title} ALARMS (${list.length})\n`);
        printTable(
          list.map((a) => ({ ...a.finding, since: a.raisedAt, until: a.clearedAt ?? "", changes: history(a), where: evidenceLine(a.finding.evidence) })),
          [
            ["severity", "SEVERITY"],
            ["check", "CHECK"],
            ["message", "MESSAGE"],
            ["where", "EVIDENCE"],
            ["since", "RAISED"],
            ...(title === "CLEARED" ? ([["until", "CLEARED"]] as [string, string][]) : []),
            ["changes", "HISTORY"],
          ],
        );
      }
      process.stdout.write(`\nNEW-FINDING RECORDS (audit log, newest ${r.recent.length})\n`);
      printTable(
        r.recent.map((f) => ({ ...f, where: evidenceLine(f.evidence) })),
        [
          ["time", "TIME"],
          ["sweep", "SWEEP"],
          ["severity", "SEVERITY"],
          ["check", "CHECK"],
          ["message", "MESSAGE"],
          ["where", "EVIDENCE"],
        ],
      );
    });
}

type Finding = { check: string; severity: string; message: string; evidence: Record<string, unknown> };
type Watch = { vm: string; intervalMs: number; policy: string; guestViewEvery: number; noNewModules?: boolean; status: string; sweeps: number; lastSweepAt: string | null; lastSweepMs: number | null; activeFindings: number; baseline: { source: string; takenAt: string } | null; problem: string | null };

/** A finding's evidence as `key=value` words, in a fixed order (the table's EVIDENCE column, a watch's lines). */
function evidenceLine(e: Record<string, unknown>): string {
  return ["address", "symbol", "expected", "found", "pid", "comm", "module", "vector"]
    .filter((k) => e[k] !== undefined)
    .map((k) => `${k}=${typeof e[k] === "string" ? (e[k] as string) : JSON.stringify(e[k])}`)
    .join(" ");
}
