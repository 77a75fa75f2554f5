/**
 * Multi-disk snapshot steps are all-or-nothing (review finding 22): offline create and disk revert complete on
 * every disk or are undone on those done, a crash half-way is finished or rolled back at the next start, a revert
 * that cannot succeed is refused before anything changes, and freezing a clone base leaves no .tmp behind.
 * Failures are injected with a qemu-img wrapper that fails one operation on one file (VIGIL_QEMU_IMG).
 */
import { test, type TestContext } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { chmodSync, existsSync, mkdirSync, mkdtempSync, rmSync, statSync, writeFileSync } from "node:fs";
import { hostname, tmpdir } from "node:os";
import { join } from "node:path";

const tools = mkdtempSync(join(tmpdir(), "vigil-qemu-img-"));
process.on("exit", () => rmSync(tools, { recursive: true, force: true }));
const wrapper = join(tools, "qemu-img");
writeFileSync(
  wrapper,
  `#!/bin/sh
# Fails "$VIGIL_TEST_FAIL_OP" (e.g. "snapshot -a") on the file "$VIGIL_TEST_FAIL_FILE"; runs qemu-img otherwise.
if [ -n "$VIGIL_TEST_FAIL_FILE" ]; then
  for last; do :; done
  if [ "$last" = "$VIGIL_TEST_FAIL_FILE" ] && [ "$1 $2" = "$VIGIL_TEST_FAIL_OP" ]; then echo "injected failure" >&2; exit 1; fi
fi
exec qemu-img "$@"
`,
);
chmodSync(wrapper, 0o755);
process.env.VIGIL_QEMU_IMG = wrapper;
const { startDaemon } = await import("../daemon/daemon.ts");
const { openSqlite } = await import("../inventory/db.ts");
const { silentLogger } = await import("../log.ts");
const { DataRegistry } = await import("../provenance/data-registry.ts");
const { createVmRequestSchema, resolveSpec } = await import("../vm/spec.ts");
const { Qcow2Image } = await import("./qcow2.ts");
const { freezeSnapshotBase } = await import("./snapshots.ts");

function failNext(op: string | undefined, file?: string): void {
  if (op === undefined) {
    delete process.env.VIGIL_TEST_FAIL_OP;
    delete process.env.VIGIL_TEST_FAIL_FILE;
  } else {
    process.env.VIGIL_TEST_FAIL_OP = op;
    process.env.VIGIL_TEST_FAIL_FILE = file;
  }
}

function tags(file: string): string[] {
  const img = Qcow2Image.open(file);
  try {
    return img.snapshots().map((s) => s.name);
  } finally {
    img.close();
  }
}
function firstByte(file: string): number {
  const img = Qcow2Image.open(file);
  try {
    return img.read(0n, 1)[0]!;
  } finally {
    img.close();
  }
}
const write = (file: string, byte: number) => execFileSync("qemu-io", ["-f", "qcow2", "-c", `write -P ${byte} 0 4k`, file], { stdio: "ignore" });

async function fixture(t: TestContext) {
  const home = mkdtempSync(join(tmpdir(), "vigil-snap-"));
  const start = () => startDaemon({ home, cache: join(home, "no-cache"), listen: "none", log: silentLogger() });
  let d = await start();
  t.after(async () => {
    failNext(undefined);
    await d.close();
    rmSync(home, { recursive: true, force: true });
  });
  const spec = resolveSpec(createVmRequestSchema.parse({ name: "two", disks: [{ name: "a", sizeMiB: 4 }, { name: "b", sizeMiB: 4 }] }), { name: "blank", boot: { kind: "disk" }, disk: undefined }, { cpu: "max" });
  const id = crypto.randomUUID();
  const owner = `user:${(await d.deps.users.list())[0]!.name}`;
  await d.repo.insert({ id, name: "two", spec, state: "stopped", host: hostname(), vmgenid: crypto.randomUUID(), generation: 1, owner, approver: null, purpose: null, expiresAt: null, labels: {}, lineage: { kind: "image", image: "blank" }, isTemplate: false, createdBy: "test", createdAt: new Date().toISOString() });
  const disksDir = join(home, "vms", id, "disks");
  mkdirSync(disksDir, { recursive: true });
  const a = join(disksDir, "a.qcow2");
  const b = join(disksDir, "b.qcow2");
  for (const f of [a, b]) execFileSync("qemu-img", ["create", "-q", "-f", "qcow2", f, "4M"]);
  const call = async (path: string, body: unknown = {}) => {
    const res = await d.app.request(path, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) }, { transport: "unix" });
    return { status: res.status, body: (await res.json()) as { error?: { message: string } } };
  };
  const restart = async () => {
    await d.close();
    d = await start();
    return d;
  };
  return { home, id, a, b, call, restart, daemon: () => d };
}

/** Both disks hold 0x11 in snapshot "s1" and 0x22 now. */
async function snapshotThenOverwrite(f: Awaited<ReturnType<typeof fixture>>): Promise<void> {
  write(f.a, 0x11);
  write(f.b, 0x11);
  assert.equal((await f.call("/v1/vms/two/snapshots", { name: "s1" })).status, 201);
  write(f.a, 0x22);
  write(f.b, 0x22);
}

test("an offline snapshot that fails on the second disk is taken off the first", async (t) => {
  const f = await fixture(t);
  failNext("snapshot -c", f.b);
  const r = await f.call("/v1/vms/two/snapshots", { name: "s1" });
  assert.equal(r.status, 500, JSON.stringify(r.body));
  assert.match(r.body.error?.message ?? "", /injected failure/);
  assert.deepEqual([tags(f.a), tags(f.b)], [[], []]);
  failNext(undefined);
  assert.equal((await f.call("/v1/vms/two/snapshots", { name: "s1" })).status, 201, "the name is free: nothing half-made is left");
});

test("an offline disk revert that fails on the second disk puts the first back", async (t) => {
  const f = await fixture(t);
  await snapshotThenOverwrite(f);
  const before = await f.daemon().repo.getByName("two");
  failNext("snapshot -a", f.b);
  const r = await f.call("/v1/vms/two/snapshots/s1/revert");
  assert.equal(r.status, 500, JSON.stringify(r.body));
  assert.deepEqual([firstByte(f.a), firstByte(f.b)], [0x22, 0x22], "both disks as before the revert");
  assert.deepEqual([tags(f.a), tags(f.b)], [["s1"], ["s1"]], "no undo snapshot left");
  const after = await f.daemon().repo.getByName("two");
  assert.deepEqual([after.generation, after.vmgenid], [before.generation, before.vmgenid], "generation and identity unchanged");
  failNext(undefined);
  assert.equal((await f.call("/v1/vms/two/snapshots/s1/revert")).status, 200);
  assert.deepEqual([firstByte(f.a), firstByte(f.b)], [0x11, 0x11]);
  assert.deepEqual([tags(f.a), tags(f.b)], [["s1"], ["s1"]]);
});

test("a revert to a snapshot one disk lacks is refused before any disk or the generation changes", async (t) => {
  const f = await fixture(t);
  write(f.a, 0x11);
  assert.equal((await f.call("/v1/vms/two/snapshots", { name: "s1" })).status, 201);
  write(f.a, 0x22);
  execFileSync("qemu-img", ["snapshot", "-d", "s1", f.b]);
  const before = await f.daemon().repo.getByName("two");
  const r = await f.call("/v1/vms/two/snapshots/s1/revert");
  assert.equal(r.status, 409, JSON.stringify(r.body));
  assert.match(r.body.error?.message ?? "", /disk "b" does not hold it; nothing was changed/);
  assert.equal(firstByte(f.a), 0x22);
  assert.equal((await f.daemon().repo.getByName("two")).generation, before.generation);
});

test("after a crash half-way, the next start rolls back an offline snapshot and a disk revert", async (t) => {
  const f = await fixture(t);
  await snapshotThenOverwrite(f);
  const vm = await f.daemon().repo.getByName("two");
  await f.daemon().close();
  // As a kill -9 leaves them: snapshot "s2" on disk a only, no row; a revert to s1 done on disk a only.
  const db = await openSqlite(join(f.home, "vigil.db"));
  const registry = new DataRegistry(db, hostname());
  const disksDir = join(f.home, "vms", f.id, "disks");
  await registry.intend(f.id, "snapshot-create", disksDir, { snapshot: "s2", disks: [f.a, f.b] });
  execFileSync("qemu-img", ["snapshot", "-c", "s2", f.a]);
  await registry.intend(f.id, "snapshot-revert", disksDir, { snapshot: "s1", undo: "vigil-undo-x", disks: [f.a, f.b], generation: vm.generation + 1 });
  for (const file of [f.a, f.b]) execFileSync("qemu-img", ["snapshot", "-c", "vigil-undo-x", file]);
  execFileSync("qemu-img", ["snapshot", "-a", "s1", f.a]);
  await db.destroy();
  assert.equal(firstByte(f.a), 0x11);

  const d = await f.restart();
  assert.deepEqual([tags(f.a), tags(f.b)], [["s1"], ["s1"]]);
  assert.deepEqual([firstByte(f.a), firstByte(f.b)], [0x22, 0x22], "the revert the inventory never recorded is undone");
  const records = await d.deps.audit.list({ action: "snapshot.recovered" });
  assert.equal(records.length, 2);
  assert.equal((await d.deps.audit.verify()).ok, true);
});

test("freezing a clone base has no time limit, reports progress, and leaves no .tmp copy when it fails", async (t) => {
  const dir = mkdtempSync(join(tmpdir(), "vigil-freeze-"));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const src = join(dir, "disk.qcow2");
  execFileSync("qemu-img", ["create", "-q", "-f", "qcow2", src, "4M"]);
  write(src, 0x33);
  execFileSync("qemu-img", ["snapshot", "-c", "s1", src]);
  const base = join(dir, "s1-disk.qcow2");
  // A half-written copy from an earlier crash, then a copy that fails.
  writeFileSync(`${base}.tmp`, "half");
  failNext("convert -p", `${base}.tmp`);
  await assert.rejects(freezeSnapshotBase(src, "s1", base, () => {}), /injected failure/);
  assert.equal(existsSync(`${base}.tmp`), false);
  assert.equal(existsSync(base), false);
  failNext(undefined);
  const seen: number[] = [];
  await freezeSnapshotBase(src, "s1", base, (p) => seen.push(p));
  assert.ok(seen.includes(100), `progress: ${seen.join(",")}`);
  assert.equal(statSync(base).mode & 0o777, 0o400);
  assert.equal(firstByte(base), 0x33);
  assert.equal(existsSync(`${base}.tmp`), false);
});
