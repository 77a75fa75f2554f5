/**
 * Audit append latency with and without witnesses, in the same run: three logs (no witness; a file witness; a
 * file and an HTTP witness served by `vigil witness serve`'s server on 127.0.0.1), appended to in alternating
 * rounds so drift on a noisy machine hits all alike. Each append is the real one (SQLite insert of the record
 * and its Merkle nodes with synchronous=FULL, the signed tree head file fsynced with its directory); witnesses
 * are published batched (at most once a second), so they should cost almost nothing per append.
 *
 *   npm run bench -- witness [appends-per-log=600] [rounds=6]
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { AuditLog } from "../src/audit/audit-log.ts";
import { loadOrCreateSiteKey } from "../src/audit/site-key.ts";
import { FileWitness, HttpWitness, type Witness } from "../src/audit/witness.ts";
import { serveWitness } from "../src/audit/witness-server.ts";
import { openSqlite, type Db } from "../src/inventory/db.ts";
import { machineLine, percentile } from "./lib.ts";

export async function run(args: string[]): Promise<void> {
  const total = Number(args[0] ?? 600);
  const rounds = Number(args[1] ?? 6);
  const dir = mkdtempSync(join(tmpdir(), "vigil-bench-witness-"));
  const key = loadOrCreateSiteKey(join(dir, "keys"));
  const { server, port } = await serveWitness({ dir: join(dir, "witness"), siteKeyPath: join(dir, "keys", "site-ed25519.pub.pem"), host: "127.0.0.1", port: 0 });
  const dbs: Db[] = [];
  const open = async (name: string, witnesses: Witness[]) => {
    const db = await openSqlite(join(dir, `${name}.db`));
    dbs.push(db);
    return AuditLog.open(db, key, "bench", join(dir, `${name}-head.json`), { witnesses });
  };
  try {
    const subjects = [
      { label: "no witness", log: await open("none", []), ms: [] as number[] },
      { label: "file witness", log: await open("file", [new FileWitness(join(dir, "witness.log"))]), ms: [] as number[] },
      { label: "file + HTTP witness", log: await open("http", [new FileWitness(join(dir, "witness2.log")), new HttpWitness(`http://127.0.0.1:${port}`)]), ms: [] as number[] },
    ];
    process.stdout.write(`audit append latency, ${total} appends per log in ${rounds} alternating rounds; ${machineLine(process.env.VIGIL_BENCH_ACCEL ?? "n/a (no VM)")}\n`);
    const perRound = Math.ceil(total / rounds);
    for (let r = 0; r < rounds; r++) {
      for (const s of subjects) {
        for (let i = 0; i < perRound; i++) {
          const t0 = process.hrtime.bigint();
          await s.log.append({ actor: "bench", action: "vm.start", target: { kind: "vm", name: "b" }, result: "ok", details: { r, i } });
          s.ms.push(Number(process.hrtime.bigint() - t0) / 1e6);
          // Untimed: let the event loop turn between appends, as it does between requests in the daemon
          // (and so the in-process witness server can answer).
          await new Promise((r) => setImmediate(r));
        }
      }
    }
    for (const s of subjects) await s.log.close();
    const base = subjects[0]!;
    process.stdout.write("\n## append (record + Merkle nodes + signed head, durable)\n");
    for (const s of subjects) {
      const ratio = s === base ? "" : `  ratio p50 ${(percentile(s.ms, 50) / percentile(base.ms, 50)).toFixed(3)}, p99 ${(percentile(s.ms, 99) / percentile(base.ms, 99)).toFixed(3)}`;
      process.stdout.write(`  ${s.label.padEnd(22)} p50 ${percentile(s.ms, 50).toFixed(2)} ms  p99 ${percentile(s.ms, 99).toFixed(2)} ms  (n=${s.ms.length})${ratio}\n`);
    }
    const published: string[] = [];
    for (const s of subjects.slice(1)) published.push(`${s.label}: ${(await s.log.health()).witnesses.map((w) => `${w.name.split(":")[0]} ${w.publications}${w.lastError ? ` (last error: ${w.lastError})` : ""}`).join(", ")}`);
    process.stdout.write(`  publications (batched, ≤ 1/s + 1 at close): ${published.join("; ")}\n`);
  } finally {
    await new Promise<void>((r) => server.close(() => r()));
    for (const db of dbs) await db.destroy();
    rmSync(dir, { recursive: true, force: true });
  }
}
