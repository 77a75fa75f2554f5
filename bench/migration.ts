/**
 * Migration benchmark (issue 12): live migration of a 256 MiB, 1-vCPU tiny guest between two QEMUs on this host,
 * (a) QEMU's own migration with its DEFAULT parameters (no capabilities, downtime-limit 300 ms, its default
 * bandwidth cap, plain unix socket) and (b) vigil's engine (runOutgoing: QEMU's TLS, adaptive downtime limit from
 * 10 ms, auto-converge, pause-before-switchover), for an idle guest and guests dirtying RAM at nominal rates
 * (guest helper `mem-dirty MiB_PER_S`). One guest is booted and bounces between fresh target QEMUs, the two
 * kinds alternating, so drift hits both alike. A migration not completed within the time cap is cancelled and
 * counted as not converged (its downtime is then not counted). No disks: RAM only, so both do the same work.
 *
 * With BW_MIBS > 0 both sides are capped at that bandwidth (the baseline's only non-default parameter): on this
 * machine the uncapped copy outruns anything a TCG guest can dirty, so the cap is what makes the load matter.
 *
 *   npm run bench -- migration [ROUNDS=3] [RATES=0,16,64] [CAP_S=60] [BW_MIBS=0]
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { machineLine, median } from "./lib.ts";
import { runOutgoing } from "../src/migration/precopy.ts";
import { finishIncoming, prepareIncoming, watchIncoming } from "../src/migration/incoming.ts";
import { parseMigrateInfo } from "../src/migration/qmp-info.ts";
import type { AgentClient } from "../src/guest-agent/agent-client.ts";
import { agentOf, guestRun, makeMigrationCerts, startQemu, type TestQemu } from "../test/migration-fixture.ts";

interface Sample {
  downtimeMs: number;
  totalMs: number;
  converged: boolean;
  /** The highest dirty rate QEMU measured during the run (MiB/s), and the passes it took. */
  dirtyMiBs: number;
  passes: number;
}

export async function run(args: string[]): Promise<void> {
  const rounds = Number(args[0] ?? 3);
  const rates = (args[1] ?? "0,16,64").split(",").map(Number);
  const capMs = Number(args[2] ?? 60) * 1000;
  const bandwidth = Number(args[3] ?? 0) * 2 ** 20;
  const dir = mkdtempSync(join(tmpdir(), "vt-bench-mig-"));
  const certs = makeMigrationCerts(join(dir, "certs"), "bench");
  let n = 0;
  let vm: TestQemu | undefined;
  let agent: AgentClient | undefined;
  const targets: TestQemu[] = [];
  process.stdout.write(
    `migration benchmark, ${rounds} rounds per load, time cap ${capMs / 1000} s, bandwidth ${bandwidth ? `${bandwidth / 2 ** 20} MiB/s` : "defaults"}; ${machineLine("tcg")}\n`,
  );

  /** Switches to the target after a completed migration: the old source is quit, the agent reconnected. */
  const adopt = async (target: TestQemu) => {
    agent?.close();
    await vm?.kill();
    vm = target;
    agent = await agentOf(vm, 120_000);
  };

  /** QEMU's own migration, defaults untouched. */
  const baseline = async (): Promise<Sample> => {
    const name = `t${n++}`;
    const target = await startQemu(join(dir, name), { incoming: true });
    targets.push(target);
    const sock = join(dir, `${name}.sock`);
    await target.qmp.execute("migrate-incoming", { uri: `unix:${sock}` });
    // the cap is the only parameter the baseline ever sets, and only when asked; otherwise QEMU 7.2's defaults
    // (downtime-limit 300 ms, max-bandwidth 128 MiB/s, measured with query-migrate-parameters) stay
    if (bandwidth > 0) await vm!.qmp.execute("migrate-set-parameters", { "max-bandwidth": bandwidth });
    const started = Date.now();
    await vm!.qmp.execute("migrate", { uri: `unix:${sock}` });
    let dirty = 0;
    for (;;) {
      const info = parseMigrateInfo(await vm!.qmp.execute("query-migrate"));
      dirty = Math.max(dirty, info.dirtyRate / 2 ** 20);
      if (info.status === "completed") {
        await target.qmp.execute("cont");
        await adopt(target);
        return { downtimeMs: info.downtimeMs, totalMs: Date.now() - started, converged: true, dirtyMiBs: dirty, passes: info.dirtySyncCount };
      }
      if (info.status === "failed") throw new Error(`baseline migration failed: ${info.error}`);
      if (Date.now() - started > capMs) {
        await vm!.qmp.execute("migrate_cancel");
        await target.kill();
        return { downtimeMs: 0, totalMs: Date.now() - started, converged: false, dirtyMiBs: dirty, passes: info.dirtySyncCount };
      }
      await new Promise((r) => setTimeout(r, 100));
    }
  };

  /** vigil's engine. */
  const engine = async (): Promise<Sample> => {
    const name = `t${n++}`;
    const target = await startQemu(join(dir, name), { incoming: true });
    targets.push(target);
    const sockets = { migrateSocket: join(dir, `${name}-mig.sock`), nbdSocket: join(dir, `${name}-nbd.sock`) };
    await prepareIncoming(target.qmp, { tlsDir: certs.serverDir, authzIdentity: "O=vigil,OU=migration,CN=bench-src", ...sockets, disks: [] });
    const watch = watchIncoming(target.qmp, undefined, { timeoutMs: capMs + 30_000 });
    watch.catch(() => undefined);
    let dirty = 0;
    let passes = 0;
    try {
      const r = await runOutgoing(vm!.qmp, {
        tlsDir: certs.clientDir,
        tlsHostname: certs.hostname,
        ...sockets,
        disks: [],
        limits: { maxDowntimeMs: 300, timeoutMs: capMs, maxBandwidth: bandwidth },
        onProgress: (p) => {
          dirty = Math.max(dirty, p.dirtyRate / 2 ** 20);
          passes = Math.max(passes, p.iterations);
        },
      });
      await watch;
      await finishIncoming(target.qmp);
      await adopt(target);
      return { downtimeMs: r.downtimeMs, totalMs: r.totalMs, converged: true, dirtyMiBs: dirty, passes: r.iterations };
    } catch (err) {
      if (!(err instanceof Error) || !/timed out/.test(err.message)) throw err;
      await target.kill();
      return { downtimeMs: 0, totalMs: capMs, converged: false, dirtyMiBs: dirty, passes };
    }
  };

  try {
    vm = await startQemu(join(dir, "first"), {});
    agent = await agentOf(vm);
    for (const rate of rates) {
      await guestRun(agent!, ["mem-dirty", String(rate)]);
      await new Promise((r) => setTimeout(r, 2000)); // let the load settle
      const a: Sample[] = [];
      const b: Sample[] = [];
      for (let i = 0; i < rounds; i++) {
        // alternate which goes first
        if (i % 2 === 0) {
          a.push(await baseline());
          b.push(await engine());
        } else {
          b.push(await engine());
          a.push(await baseline());
        }
      }
      print(rate === 0 ? "idle guest" : `guest dirtying ~${rate} MiB/s (nominal)`, a, b);
    }
  } finally {
    agent?.close();
    await vm?.kill();
    for (const t of targets) await t.kill();
    rmSync(dir, { recursive: true, force: true });
  }
}

function print(title: string, a: Sample[], b: Sample[]): void {
  const line = (label: string, s: Sample[]) => {
    const ok = s.filter((x) => x.converged);
    const down = ok.length > 0 ? median(ok.map((x) => x.downtimeMs)).toFixed(1) : "-";
    const total = median(s.map((x) => x.totalMs)).toFixed(0);
    return `  ${label.padEnd(40)} downtime median ${down} ms, total median ${total} ms, converged ${ok.length}/${s.length}` +
      `  (downtimes ${s.map((x) => (x.converged ? x.downtimeMs : "cap")).join(", ")}; totals ${s.map((x) => x.totalMs).join(", ")};` +
      ` passes ${s.map((x) => x.passes).join(", ")}; measured dirty rate max ${s.map((x) => x.dirtyMiBs.toFixed(0)).join(", ")} MiB/s)\n`;
  };
  process.stdout.write(`\n## ${title}\n`);
  process.stdout.write(line("QEMU default (no caps, 300 ms limit)", a));
  process.stdout.write(line("vigil runOutgoing (TLS, adaptive)", b));
  const okA = a.filter((x) => x.converged);
  const okB = b.filter((x) => x.converged);
  if (okA.length > 0 && okB.length > 0) {
    const dr = median(okB.map((x) => x.downtimeMs)) / median(okA.map((x) => x.downtimeMs));
    const tr = median(b.map((x) => x.totalMs)) / median(a.map((x) => x.totalMs));
    process.stdout.write(`  ratio vigil/baseline: downtime ${dr.toFixed(3)}, total time ${tr.toFixed(3)}   (goal: idle downtime <= 30 ms)\n`);
  }
}
