/**
 * A unix-socket relay to the test PostgreSQL server, run in a child process, for tests that make the lease database
 * unreachable for one agent alone: `url(db)` connects through it; `cut()` drops every connection and takes no new
 * one; `restore()` listens again. The relay and its directory go with the test.
 */
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir, userInfo } from "node:os";
import { join } from "node:path";
import type { TestContext } from "node:test";
import { PG_SOCKET_DIR } from "../src/inventory/testing/pg.ts";
import { waitFor } from "./harness.ts";

const RELAY = `
const net = require("node:net"); const fs = require("node:fs");
const [dir, target] = process.argv.slice(1);
const path = dir + "/.s.PGSQL.5432"; const open = new Set(); let server;
const listen = () => { try { fs.rmSync(path, { force: true }); } catch {} server = net.createServer((c) => {
  const s = net.connect(target); open.add(c); open.add(s);
  c.pipe(s); s.pipe(c);
  const end = () => { c.destroy(); s.destroy(); open.delete(c); open.delete(s); };
  c.on("error", end); s.on("error", end); c.on("close", end); s.on("close", end);
}); server.listen(path, () => process.stdout.write("listening\\n")); };
const cut = () => { server.close(); for (const x of open) x.destroy(); open.clear(); fs.rmSync(path, { force: true }); process.stdout.write("cut\\n"); };
let line = "";
process.stdin.on("data", (d) => { line += d; for (let i; (i = line.indexOf("\\n")) >= 0; line = line.slice(i + 1)) (line.slice(0, i) === "cut" ? cut : listen)(); });
process.stdin.on("end", () => process.exit(0));
listen();
`;

export async function pgRelay(t: TestContext) {
  const dir = mkdtempSync(join(tmpdir(), "vigil-pgrelay-"));
  const child = spawn(process.execPath, ["-e", RELAY, dir, join(PG_SOCKET_DIR, ".s.PGSQL.5432")], { stdio: ["pipe", "pipe", "inherit"] });
  let out = "";
  child.stdout.on("data", (d: Buffer) => (out += d.toString()));
  t.after(() => {
    child.kill("SIGKILL");
    rmSync(dir, { recursive: true, force: true });
  });
  const said = (word: string, n: number) => waitFor(() => out.split("\n").filter((l) => l === word).length >= n, 10_000, `the relay to say ${word} (${n}; it said ${JSON.stringify(out)})`);
  await said("listening", 1);
  let cuts = 0;
  let listens = 1;
  return {
    url: (db: string) => `postgresql:///${encodeURIComponent(db)}?host=${encodeURIComponent(dir)}&user=${encodeURIComponent(userInfo().username)}`,
    cut: async () => {
      child.stdin.write("cut\n");
      await said("cut", ++cuts);
    },
    restore: async () => {
      child.stdin.write("restore\n");
      await said("listening", ++listens);
    },
  };
}
