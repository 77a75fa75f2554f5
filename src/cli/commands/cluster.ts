/**
 * The cluster commands (docs/cluster.md): `agent` runs this host's agent, `host add|list|remove` and
 * `cluster balance|consolidate` talk to the manager (`vigil serve --cluster`), `vm migrate` moves a running VM
 * with a live progress line. `host` without a subcommand still reports this daemon's host (commands/system.ts).
 */
import type { Command } from "commander";
import { writeAgentCredentials } from "../../cluster/agent-credentials.ts";
import type { NegotiatedPlan } from "../../migration/negotiate.ts";
import { balanceJson, consolidateJson, formatBalance, formatConsolidate } from "../../cluster/placement-report.ts";
import type { BalancePlan, ConsolidationPlan } from "../../cluster/placement.ts";
import type { HaPlan } from "../../cluster/leases.ts";
import type { CertBundle, MigrationProgress, MigrationResult } from "../../cluster/types.ts";
import { VigilError } from "../../errors.ts";
import { ApiError, call } from "../client.ts";
import { report } from "../exit-codes.ts";
import { clearLine, printJson, printTable, progressLine } from "../output.ts";
import { enc, vmPath, writableOutput, type CliContext } from "./common.ts";

interface MigrationView {
  id: string;
  vmName: string;
  source: string;
  target: string;
  state: string;
  phase: string;
  progress: MigrationProgress | null;
  result: MigrationResult | null;
  error: string | null;
  options?: { negotiated?: NegotiatedPlan };
}

const mib = (n: number) => `${(n / 2 ** 20).toFixed(0)} MiB`;

/** Adds `agent`, `host add|list|remove`, `cluster …` and `vm migrate`. */
export function registerCluster(program: Command, ctx: CliContext): void {
  program
    .command("agent")
    .description("Run this host's cluster agent in the foreground (its VMs, its inventory; the manager's door is mutual TLS)")
    .requiredOption("--listen <ip:port>", "the cluster listener (the address `vigil host add --addr` was given)")
    .requiredOption("--credentials <dir>", "the directory `vigil host add … --out DIR` wrote")
    .option("--lease-db <url>", "the cluster's PostgreSQL (postgres://…): hold this host's lease there and fence itself when it cannot renew")
    .option("--lease-ttl <seconds>", "how long a lease lives (default 15)")
    .option("--lease-margin <seconds>", "stop the VMs this long before an unrenewed lease expires (default 5)")
    .option("--shared-storage <dir>", "the shared storage mounted at the same path on every host (root-owned, 0700 or 0711): `vm create --storage shared` VMs keep their disks there")
    .action(async (o: { listen: string; credentials: string; leaseDb?: string; leaseTtl?: string; leaseMargin?: string; sharedStorage?: string }) => {
      const { runDaemon } = await ctx.hooks.loadDaemon();
      try {
        const lease = leaseOptions(o);
        await runDaemon({ listen: "none", cluster: { listen: o.listen, credentialsDir: o.credentials, ...lease, ...(o.sharedStorage !== undefined ? { sharedStorage: o.sharedStorage } : {}) } });
      } catch (err) {
        process.exit(report(err));
      }
    });

  const host = program.commands.find((c) => c.name() === "host")!;
  // `host` has its own --json (this daemon's host report), which commander gives `--json` to after a subcommand too.
  const parentJson = () => host.opts<{ json?: boolean }>().json === true;
  host
    .command("add <name>")
    .description("Add a host to the cluster: issues its agent certificate into --out (copy that directory to the host)")
    .requiredOption("--addr <ip:port>", "the agent's cluster listener")
    .requiredOption("--out <dir>", "where to write the agent's credentials (0700; key 0600)")
    .option("--json", "machine-readable output")
    .action(async (name: string, o: { addr: string; out: string; json?: boolean }) => {
      const out = writableOutput("out", o.out);
      const r = await call<{ host: { name: string; address: string; certFingerprint: string }; credentials: CertBundle }>("POST", "/v1/hosts", { name, address: o.addr });
      writeAgentCredentials(out, r.credentials);
      if (o.json || parentJson()) return printJson({ host: r.host, credentials: out });
      process.stdout.write(`Added host ${r.host.name} at ${r.host.address} (certificate ${r.host.certFingerprint.slice(0, 23)}…)\nIts credentials are in ${out}: start it with \`vigil agent --listen ${r.host.address} --credentials DIR\`\n`);
    });
  host
    .command("list")
    .description("The cluster's hosts: state, last heartbeat, memory, VMs")
    .option("--json", "machine-readable output")
    .action(async (o: { json?: boolean }) => {
      const hosts = await call<Array<{ name: string; address: string; state: string; lastSeen: string | null; status: { memTotalMiB: number; memFreeMiB: number; cpus: number; vms: unknown[] } | null }>>("GET", "/v1/hosts");
      if (o.json || parentJson()) return printJson(hosts);
      printTable(
        hosts.map((h) => ({ ...h, mem: h.status ? `${h.status.memFreeMiB}/${h.status.memTotalMiB} MiB free` : "-", cpus: h.status?.cpus ?? "-", vms: h.status?.vms.length ?? "-", lastSeen: h.lastSeen ?? "never" })),
        [["name", "NAME"], ["address", "ADDRESS"], ["state", "STATE"], ["mem", "MEMORY"], ["cpus", "CPUS"], ["vms", "VMS"], ["lastSeen", "LAST SEEN"]],
      );
    });
  host
    .command("remove <name>")
    .description("Remove a host that holds no VMs (its certificate is no longer accepted)")
    .action(async (name: string) => {
      await call("DELETE", `/v1/hosts/${enc(name)}`);
      process.stdout.write(`Removed host ${name}\n`);
    });

  const cluster = program.command("cluster").description("Cluster-wide placement: balance and consolidation recommendations");
  cluster
    .command("balance")
    .description("Recommend migrations that even out the hosts' memory load (DRS-like), with the reasoning")
    .option("--apply", "perform the recommended migrations, one after another")
    .option("--min-gain <points>", "the least drop of the memory load spread, in points, a move must bring (default 1)")
    .option("--json", "machine-readable output")
    .action(async (o: { apply?: boolean; json?: boolean; minGain?: string }) => {
      const gain = o.minGain === undefined ? undefined : Number(o.minGain);
      if (gain !== undefined && !(/^[0-9]*\.?[0-9]+$/.test(o.minGain!) && gain <= 100)) throw new ApiError("VIGIL_BAD_REQUEST", `--min-gain must be points from 0 to 100 (e.g. 0.5), not ${JSON.stringify(o.minGain)}`, 0, "min-gain");
      const plan = await call<BalancePlan>("GET", `/v1/cluster/balance${gain === undefined ? "" : `?minGain=${gain / 100}`}`);
      if (o.json && !o.apply) return printJson(balanceJson(plan));
      if (!o.json) process.stdout.write(formatBalance(plan));
      if (!o.apply) return;
      const done: MigrationView[] = [];
      for (const move of plan.moves) done.push(await migrate(move.vm, move.to, {}, o.json === true));
      if (o.json) printJson({ plan: balanceJson(plan), migrations: done });
    });
  cluster
    .command("consolidate")
    .description("Recommend hosts that could be emptied (DPM-like), with where their VMs would go")
    .option("--json", "machine-readable output")
    .action(async (o: { json?: boolean }) => {
      const plan = await call<ConsolidationPlan>("GET", "/v1/cluster/consolidate");
      if (o.json) return printJson(consolidateJson(plan));
      process.stdout.write(formatConsolidate(plan));
    });

  cluster
    .command("ha")
    .description("The HA VMs and the last HA plan: what would be restarted where once a host is fenced (not performed: no shared storage yet)")
    .option("--json", "machine-readable output")
    .action(async (o: { json?: boolean }) => {
      const r = await call<{ ha: { name: string; host: string }[]; plan: (HaPlan & { at: string; refused: string }) | null }>("GET", "/v1/cluster/ha");
      if (o.json) return printJson(r);
      printTable(r.ha, [["name", "VM"], ["host", "HOST"]]);
      const p = r.plan;
      if (!p) return;
      for (const x of p.restarts) process.stdout.write(`would restart ${x.vm} (from ${x.from}, lost epoch ${x.lostEpoch}) on ${x.to}: refused, ${p.refused}\n  ${x.reasons.join("\n  ")}\n`);
      for (const x of p.unplaced) process.stdout.write(`cannot place ${x.vm} (from ${x.from}): ${x.reasons.join("; ")}\n`);
      for (const x of p.waiting) process.stdout.write(`waiting: ${x.reason}\n`);
    });

  const vm = program.commands.find((c) => c.name() === "vm")!;
  vm.command("set <name>")
    .description("Set a VM's cluster properties: --ha (restart it on another host when its host is fenced) or --no-ha")
    .option("--ha", "mark it HA")
    .option("--no-ha", "clear the HA mark")
    .option("--json", "machine-readable output")
    .action(async (name: string, o: { ha?: boolean; json?: boolean }) => {
      if (o.ha === undefined) throw new VigilError("VIGIL_BAD_REQUEST", "Give --ha or --no-ha", { field: "ha" });
      const r = await call<{ name: string; host: string; ha: boolean }>("POST", vmPath(name, "/ha"), { ha: o.ha });
      if (o.json) return printJson(r);
      process.stdout.write(`${r.name} (on ${r.host}) is ${r.ha ? "HA" : "not HA"}\n`);
    });
  vm.command("migrate <name>")
    .description("Migrate a VM to another host: live when it runs (pre-copy over QEMU's TLS; disks mirrored), its disks copied over the agents' TLS when it is stopped")
    .option("--to <host>", "the target host")
    .option("--max-downtime <ms>", "upper bound of the adaptive downtime limit (default 300)")
    .option("--timeout <seconds>", "cancel the migration after this long (default 600)")
    .option("--cancel", "cancel the VM's running migration (it keeps running where it is)")
    .option("--no-wait", "return once it has started")
    .option("--json", "machine-readable output")
    .action(async (name: string, o: { to?: string; maxDowntime?: string; timeout?: string; cancel?: boolean; wait: boolean; json?: boolean }) => {
      if (o.cancel) {
        const r = await call<MigrationView>("POST", vmPath(name, "/migrate"), { cancel: true });
        if (o.json) return printJson(r);
        return void process.stdout.write(`Cancelling migration ${r.id} of ${name}\n`);
      }
      if (!o.to) throw new ApiError("VIGIL_BAD_REQUEST", "Give the target host: --to HOST", 0, "to");
      const limits = {
        ...(o.maxDowntime !== undefined ? { maxDowntimeMs: Number(o.maxDowntime) } : {}),
        ...(o.timeout !== undefined ? { timeoutMs: Number(o.timeout) * 1000 } : {}),
      };
      if (!o.wait) {
        const r = await call<MigrationView>("POST", vmPath(name, "/migrate"), { to: o.to, ...limits });
        return o.json ? printJson(r) : void process.stdout.write(`Migration ${r.id} of ${name} to ${o.to} started\n`);
      }
      const final = await migrate(name, o.to, limits, o.json === true);
      if (o.json) printJson(final);
      if (final.state !== "completed") process.exitCode = 1;
    });
}

/** `--lease-*` as DaemonOptions.cluster fields; seconds (decimals allowed, to the ms) checked before anything starts. */
export function leaseOptions(o: { leaseDb?: string | undefined; leaseTtl?: string | undefined; leaseMargin?: string | undefined }): { leaseDb?: string; leaseTtlMs?: number; leaseMarginMs?: number } {
  const seconds = (value: string, flag: string, min: number): number => {
    const n = /^[0-9]+(\.[0-9]{1,3})?$/.test(value) ? Math.round(Number(value) * 1000) : Number.NaN;
    if (!(n >= min) || n > 3_600_000) throw new VigilError("VIGIL_BAD_REQUEST", `Invalid ${flag} ${JSON.stringify(value)}: seconds from ${min / 1000} to 3600 (e.g. 15 or 2.5)`, { field: flag.slice(2) });
    return n;
  };
  if ((o.leaseTtl !== undefined || o.leaseMargin !== undefined) && o.leaseDb === undefined) throw new VigilError("VIGIL_BAD_REQUEST", "--lease-ttl and --lease-margin need --lease-db", { field: "lease-db" });
  return {
    ...(o.leaseDb !== undefined ? { leaseDb: o.leaseDb } : {}),
    ...(o.leaseTtl !== undefined ? { leaseTtlMs: seconds(o.leaseTtl, "--lease-ttl", 1) } : {}),
    ...(o.leaseMargin !== undefined ? { leaseMarginMs: seconds(o.leaseMargin, "--lease-margin", 0) } : {}),
  };
}

/** Starts a migration and follows it to its end, with a progress line on a terminal. */
async function migrate(name: string, to: string, limits: Record<string, number>, quiet: boolean): Promise<MigrationView> {
  let m = await call<MigrationView>("POST", vmPath(name, "/migrate"), { to, ...limits });
  if (!quiet && m.options?.negotiated) process.stdout.write(`${formatPlan(m.options.negotiated)}\n`);
  for (;;) {
    m = await call<MigrationView>("GET", `/v1/migrations/${enc(m.id)}`);
    const p = m.progress;
    if (!quiet && p && process.stderr.isTTY) {
      const [done, total] = p.phase === "disks" ? [p.diskDone, p.diskTotal] : [p.ramTransferred, p.ramTransferred + p.ramRemaining];
      if (m.options?.negotiated?.how === "cold") progressLine(`${name} → ${to}: copying the disks, ${mib(p.diskDone)} of ${mib(p.diskTotal)}`, p.diskDone, Math.max(p.diskTotal, 1));
      else progressLine(`${name} → ${to}: ${p.phase}, ${mib(p.ramTransferred)} sent, ${mib(p.ramRemaining)} left, dirty ${mib(p.dirtyRate)}/s, expected downtime ${p.expectedDowntimeMs} ms (limit ${p.downtimeLimitMs})`, done, Math.max(total, 1));
    }
    if (m.state !== "running") break;
    await new Promise((r) => setTimeout(r, 250));
  }
  if (!quiet) {
    if (process.stderr.isTTY) clearLine();
    if (m.state === "completed" && m.options?.negotiated?.how === "cold") process.stdout.write(`Moved stopped VM ${name} to ${to}${m.result ? `: ${mib(m.result.diskTransferred)} of disk copied in ${(m.result.totalMs / 1000).toFixed(1)} s` : ""}\n`);
    else if (m.state === "completed") process.stdout.write(`Migrated ${name} to ${to}${m.result ? `: downtime ${m.result.downtimeMs} ms, total ${(m.result.totalMs / 1000).toFixed(1)} s, ${m.result.iterations} passes` : ""}\n`);
    else process.stdout.write(`Migration of ${name} ${m.state}${m.error ? `: ${m.error}` : ""}; it runs on ${m.source}\n`);
  }
  return m;
}

/** One line for `vigil vm migrate`: what was negotiated. */
export function formatPlan(p: NegotiatedPlan): string {
  if (p.how === "cold") return `negotiated: cold move of a stopped VM (disks copied over the agents' TLS), machine ${p.machine} and cpu ${p.cpu} runnable on ${p.target.host} (QEMU ${p.target.version})`;
  return `negotiated: QEMU ${p.source.version} → ${p.target.version}, machine ${p.machine}, cpu ${p.cpu}; capabilities ${p.capabilities.join(", ")}${p.declined.length > 0 ? `; off: ${p.declined.map((d) => d.capability).join(", ")}` : ""}`;
}
