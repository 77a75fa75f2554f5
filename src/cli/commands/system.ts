/**
 * The commands about this daemon process and host: `serve` runs the daemon in the foreground (the only command that
 * loads it, through the hooks), `host` reports the accelerator, version and the audit log's health.
 */
import type { Command } from "commander";
import { ApiError, call } from "../client.ts";
import { EXIT, report } from "../exit-codes.ts";
import { plural, printJson } from "../output.ts";
import type { CliContext } from "./common.ts";

/** Adds `serve` and `host`. */
export function registerSystem(program: Command, ctx: CliContext): void {
  const { hooks } = ctx;
  program
    .command("serve")
    .description("Run the daemon (manager + local host) in the foreground")
    .option("--listen <addr:port>", 'TCP address for the HTTP API, or "none"', "127.0.0.1:7450")
    .option("--tls", "serve HTTPS even on a loopback address (always on elsewhere)")
    .option("--no-tls", "plain HTTP (refused on a non-loopback address)")
    .option("--tls-cert <file>", "PEM certificate for HTTPS (default: a self-signed one in VIGIL_HOME/keys)")
    .option("--tls-key <file>", "PEM private key for --tls-cert")
    .option("--cluster", "run the cluster manager instead (no local VMs; agents do the work: docs/cluster.md)")
    .option("--db <url>", "the manager's inventory: postgres://… (or a SQLite file for a one-machine trial)")
    .action(async (o: { listen: string; tls?: boolean; tlsCert?: string; tlsKey?: string; cluster?: boolean; db?: string }, cmd: Command) => {
      if (o.cluster) {
        if (!o.db) throw new ApiError("VIGIL_BAD_REQUEST", "The cluster manager needs its inventory: --db postgres://…", 0, "db");
        if ((o.tlsCert === undefined) !== (o.tlsKey === undefined)) throw new ApiError("VIGIL_BAD_REQUEST", "Give --tls-cert and --tls-key together", 0, o.tlsCert ? "tls-key" : "tls-cert");
        if (o.tls === false && o.tlsCert) throw new ApiError("VIGIL_BAD_REQUEST", "Use either --no-tls or --tls-cert/--tls-key, not both", 0, "tls");
        const tls = o.tlsCert && o.tlsKey ? { cert: o.tlsCert, key: o.tlsKey } : o.tls === true ? ("auto" as const) : o.tls === false ? ("off" as const) : undefined;
        // The manager serves its socket only unless --listen is given (a single host listens on 127.0.0.1:7450 by default).
        const listen = cmd.getOptionValueSource("listen") === "default" ? "none" : o.listen;
        const { runClusterManager } = await hooks.loadDaemon();
        try {
          return await runClusterManager({ db: o.db, listen, tls });
        } catch (err) {
          process.exit(report(err));
        }
      }
      if (o.db) throw new ApiError("VIGIL_BAD_REQUEST", "--db is for the cluster manager (--cluster); a single host keeps its SQLite inventory in VIGIL_HOME", 0, "db");
      if ((o.tlsCert === undefined) !== (o.tlsKey === undefined)) throw new ApiError("VIGIL_BAD_REQUEST", "Give --tls-cert and --tls-key together", 0, o.tlsCert ? "tls-key" : "tls-cert");
      if (o.tls === false && o.tlsCert) throw new ApiError("VIGIL_BAD_REQUEST", "Use either --no-tls or --tls-cert/--tls-key, not both", 0, "tls");
      const tls = o.tlsCert && o.tlsKey ? { cert: o.tlsCert, key: o.tlsKey } : o.tls === true ? ("auto" as const) : o.tls === false ? ("off" as const) : undefined;
      const { runDaemon } = await hooks.loadDaemon();
      try {
        await runDaemon({ listen: o.listen, tls });
      } catch (err) {
        // The daemon has closed what it opened; exit now so nothing half-started keeps the process alive.
        process.exit(report(err));
      }
    });

  program
    .command("host")
    .description("This host: accelerator (and why), version, VIGIL_HOME")
    .option("--json", "machine-readable output")
    .action(async (o: { json?: boolean }) => {
      const h = await call<Record<string, string> & { audit?: AuditHealthView }>("GET", "/v1/host");
      if (o.json) return printJson(h);
      const { audit: health, ...facts } = h;
      for (const [k, v] of Object.entries(facts)) process.stdout.write(`${k.padEnd(12)} ${v}\n`);
      if (health) {
        process.stdout.write(`${"audit".padEnd(12)} ${health.ok ? "ok" : "TAMPERED"}${health.head ? ` (${plural(health.head.size, "record")}, root ${health.head.rootHash.slice(0, 16)}…)` : ""}\n`);
        for (const f of health.findings) process.stdout.write(`${"".padEnd(12)} finding: ${f}\n`);
        for (const w of health.warnings ?? []) process.stdout.write(`${"".padEnd(12)} warning: ${w}\n`);
        for (const r of health.tamperRecords) process.stdout.write(`${"".padEnd(12)} audit.tamper record ${r.seq} at ${r.time}\n`);
        for (const w of health.witnesses) {
          process.stdout.write(`${"witness".padEnd(12)} ${w.name}: ${w.lastPublished ? `head ${w.lastPublished.size} at ${w.lastPublished.time}` : "nothing published yet"}${w.lastError ? `; last error: ${w.lastError}` : ""}\n`);
        }
        if (!health.ok) process.exitCode = EXIT.conflict;
      }
    });
}

interface AuditHealthView {
  ok: boolean;
  findings: string[];
  warnings?: string[];
  tamperRecords: Array<{ seq: number; time: string }>;
  head: { size: number; rootHash: string } | null;
  witnesses: Array<{ name: string; lastPublished: { size: number; time: string } | null; lastError: string | null }>;
}
