/**
 * The target's side of a stopped VM's move between agents: what the source agent uploads is hostile input. Two
 * daemons in this process (no QEMU runs); the disks are real qcow2 files made with qemu-img.
 */
import { test, type TestContext } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { randomUUID } from "node:crypto";
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startDaemon } from "../daemon/daemon.ts";
import { fakeTiny } from "../image/testing/fake-tiny.ts";
import { silentLogger } from "../log.ts";
import { DataRegistry } from "../provenance/data-registry.ts";
import type { AgentMigrationDeps } from "./agent-migrations.ts";
import { ColdMoves } from "./cold-agents.ts";
import { exportDossier } from "./dossier.ts";

async function host(t: TestContext, name: string) {
  const home = mkdtempSync(join(tmpdir(), `vigil-cold-${name}-`));
  const cache = join(home, "cache");
  fakeTiny(cache);
  const daemon = await startDaemon({ home, cache, listen: "none", log: silentLogger() });
  t.after(async () => {
    await daemon.close();
    rmSync(home, { recursive: true, force: true });
  });
  const d = daemon.deps;
  const db = daemon.repo.db;
  const deps = { vms: d.vms, db, guard: d.guard, audit: d.audit, catalog: d.catalog, hostName: d.host.name, vmsDir: join(home, "vms"), registry: new DataRegistry(db, d.host.name, join(home, "vms")), log: d.log, watches: d.introspection, clusterHost: "127.0.0.1", credentials: { caPem: "", certPem: "", keyPem: "" } } as AgentMigrationDeps;
  if (!(await d.users.findByName("ada"))) await d.users.create({ name: "ada", roles: ["admin"], introspect: true }, "test");
  const ctx = { actor: await d.users.actorFor((await d.users.findByName("ada"))!, "token"), requestId: randomUUID() };
  return { home, daemon, deps, ctx };
}

const body = (file: string) => new Blob([readFileSync(file)]).stream();
const img = (dir: string, name: string, args: string[]) => {
  const f = join(dir, name);
  execFileSync("qemu-img", ["create", "-q", "-f", "qcow2", ...args.slice(0, -1), f, args.at(-1)!]);
  return f;
};

test("a disk upload: only from the move's source, a plain qcow2 of the dossier's size, its backing replaced by ours", async (t) => {
  const a = await host(t, "a");
  const b = await host(t, "b");
  const view = await a.daemon.deps.vms.create(a.ctx, { name: "mover", disks: [{ name: "data", sizeMiB: 16 }], nics: [] });
  const dossier = JSON.parse(JSON.stringify(await exportDossier(a.deps, a.ctx, "mover"))) as unknown;
  const cold = new ColdMoves(b.deps);
  const id = "m-1";
  const plan = await cold.prepareIn(b.ctx, { id, dossier, sourceHost: "a-host" });
  assert.deepEqual(plan.disks.map((x) => [x.name, x.sync]), [["root", "top"], ["data", "full"]]);
  const work = mkdtempSync(join(tmpdir(), "vigil-cold-up-"));
  t.after(() => rmSync(work, { recursive: true, force: true }));
  const rootSize = plan.disks[0]!.virtualSize;
  const dataSize = plan.disks[1]!.virtualSize;

  const good = img(work, "good.qcow2", [String(rootSize)]);
  await assert.rejects(cold.acceptDisk("evil", id, "root", body(good)), { code: "VIGIL_FORBIDDEN", message: /"evil" is not the source of move "m-1"/ });
  await assert.rejects(cold.acceptDisk("a-host", id, "swap", body(good)), { code: "VIGIL_BAD_REQUEST", field: "disk" });
  await assert.rejects(cold.acceptDisk("a-host", id, "root", body(img(work, "small.qcow2", ["1M"]))), /is 1048576 bytes, not the dossier's/);
  await assert.rejects(cold.acceptDisk("a-host", id, "root", body(img(work, "df.qcow2", ["-o", `data_file=${join(work, "df.raw")}`, String(rootSize)]))), /names an external data file/);
  const huge = join(work, "huge.bin");
  writeFileSync(huge, Buffer.alloc(dataSize + Math.ceil(dataSize * 0.25) + 64 * 2 ** 20 + 1));
  await assert.rejects(cold.acceptDisk("a-host", id, "data", body(huge)), /larger than/);
  await assert.rejects(cold.commit(b.ctx, id), /disk "root", "data" has not arrived/);

  // A "whole disk" whose header names a file of the target's as its backing: the backing is dropped, never read.
  const secret = join(work, "secret.raw");
  writeFileSync(secret, Buffer.concat([Buffer.from("TOP-SECRET-OF-THE-TARGET"), Buffer.alloc(dataSize - 24)]));
  await cold.acceptDisk("a-host", id, "data", body(img(work, "steal.qcow2", ["-F", "raw", "-b", secret, String(dataSize)])));
  await cold.acceptDisk("a-host", id, "root", body(img(work, "top.qcow2", ["-F", "raw", "-b", secret, String(rootSize)])));
  const disks = join(b.deps.vmsDir, view.id, "disks");
  for (const f of ["data.qcow2", "root.qcow2"]) {
    const raw = join(work, `${f}.raw`);
    execFileSync("qemu-img", ["convert", "-O", "raw", join(disks, f), raw]);
    assert.equal(readFileSync(raw).includes("TOP-SECRET"), false, `${f} holds nothing of the target's file`);
  }
  const info = (f: string) => JSON.parse(execFileSync("qemu-img", ["info", "--output=json", join(disks, f)], { encoding: "utf8" })) as { "backing-filename"?: string };
  assert.equal(info("data.qcow2")["backing-filename"], undefined, "the whole disk has no backing");
  assert.match(info("root.qcow2")["backing-filename"] ?? "", /images\/tiny\/k1\/disk\.qcow2$/, "the top layer sits on the target's own base");
  assert.deepEqual(readdirSync(join(b.deps.vmsDir, view.id)).filter((f) => f.startsWith("upload-")), [], "no upload left behind");
  await assert.rejects(cold.acceptDisk("a-host", id, "root", body(good)), /has arrived already/);

  const done = await cold.commit(b.ctx, id);
  assert.equal(done.state, "stopped");
  // The source could not let go: the committed copy is discarded again.
  await cold.abort(b.ctx, id, "test: the source kept it");
  assert.equal(existsSync(join(b.deps.vmsDir, view.id)), false);
  await assert.rejects(b.daemon.repo.getById(view.id));
});
