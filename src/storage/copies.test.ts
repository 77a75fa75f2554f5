/**
 * Copies of a VM — clones and export/import — keep what constrains the original: who may make them (the right
 * to export, not to read), the security floor, and the single use of saved memory; and a bundle is checked whole
 * before anything exists. No QEMU is started: the VMs are stopped, with one blank qcow2 disk each.
 */
import { PostureRepository } from "../posture/posture-repository.ts";
import { test, type TestContext } from "node:test";
import assert from "node:assert/strict";
import { createHash, createPrivateKey, createPublicKey, generateKeyPairSync, randomUUID, sign, verify, type KeyObject } from "node:crypto";
import { execFileSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { hostname, tmpdir } from "node:os";
import { join } from "node:path";
import Database from "better-sqlite3";
import { startDaemon, type Daemon } from "../daemon/daemon.ts";
import { silentLogger } from "../log.ts";
import { createVmRequestSchema, resolveSpec } from "../vm/spec.ts";
import { canonicalJson } from "../audit/canonical-json.ts";
import { keyIdOf } from "../audit/site-key.ts";
import { TREE_HEAD_CONTEXT, treeHeadBytes, verifyTreeHead } from "../audit/chain.ts";
import { BLOCK, END, fileHeader, padding } from "./bundle/tar.ts";
import { bundleSignedBytes, signatureEntry } from "./bundle/format.ts";

interface F {
  daemon: Daemon;
  home: string;
  call: (who: string, method: string, path: string, body?: unknown, headers?: Record<string, string>) => Promise<Response>;
  /** A stopped VM owned by `owner` with one blank 16 MiB qcow2 disk "data". */
  vm: (name: string, owner: string) => Promise<string>;
  sql: (statement: string, ...params: unknown[]) => void;
  vmNames: () => Promise<string[]>;
}

async function fixture(t: TestContext): Promise<F> {
  const home = mkdtempSync(join(tmpdir(), "vigil-copies-"));
  const daemon = await startDaemon({ home, cache: join(home, "no-cache"), listen: "none", log: silentLogger() });
  t.after(async () => {
    await daemon.close();
    rmSync(home, { recursive: true, force: true });
  });
  const tokens: Record<string, string> = {};
  for (const [name, roles] of [["admin", ["admin"]], ["bob", ["owner"]], ["carol", ["owner"]], ["eve", ["auditor", "owner"]], ["audrey", ["auditor"]]] as const) {
    await daemon.deps.users.create({ name, roles: [...roles], introspect: false }, "test");
    tokens[name] = (await daemon.deps.users.issueToken(name, "t")).token;
  }
  const call = (who: string, method: string, path: string, body?: unknown, headers: Record<string, string> = {}) =>
    Promise.resolve(
      daemon.app.request(
        path,
        {
          method,
          headers: { authorization: `Bearer ${tokens[who]!}`, ...(body instanceof Uint8Array ? { "content-type": "application/x-vigil-bundle" } : body !== undefined ? { "content-type": "application/json" } : {}), ...headers },
          ...(body instanceof Uint8Array ? { body } : body !== undefined ? { body: JSON.stringify(body) } : {}),
        },
        { transport: "tcp" },
      ),
    );
  const vm = async (name: string, owner: string) => {
    const spec = resolveSpec(createVmRequestSchema.parse({ name, disks: [{ name: "data", sizeMiB: 16 }] }), { name: "blank", boot: { kind: "disk" }, disk: undefined }, { cpu: "max" });
    const id = randomUUID();
    await daemon.repo.insert({ id, name, spec, state: "stopped", host: hostname(), vmgenid: randomUUID(), generation: 1, owner: `user:${owner}`, approver: null, purpose: null, expiresAt: null, labels: {}, lineage: { kind: "image", image: "blank" }, isTemplate: false, createdBy: owner, createdAt: new Date().toISOString() });
    mkdirSync(join(home, "vms", id, "disks"), { recursive: true });
    execFileSync("qemu-img", ["create", "-q", "-f", "qcow2", join(home, "vms", id, "disks", "data.qcow2"), "16M"]);
    return id;
  };
  const sql = (statement: string, ...params: unknown[]) => {
    const db = new Database(join(home, "vigil.db"));
    try {
      db.prepare(statement).run(...params);
    } finally {
      db.close();
    }
  };
  const vmNames = async () => (await daemon.repo.list()).map((v) => v.name).sort();
  return { daemon, home, call, vm, sql, vmNames };
}

async function ok<T>(r: Response | Promise<Response>, status = 200): Promise<T> {
  const res = await r;
  const text = await res.text();
  assert.equal(res.status, status, text);
  return JSON.parse(text) as T;
}

async function refused(r: Response | Promise<Response>, status: number, message: RegExp): Promise<void> {
  const res = await r;
  const body = (await res.json()) as { error: { message: string } };
  assert.equal(res.status, status, JSON.stringify(body));
  assert.match(body.error.message, message);
}

async function exportBundle(f: F, who: string, vm: string, body: unknown = {}): Promise<Buffer> {
  const res = await f.call(who, "POST", `/v1/vms/${vm}/export`, body);
  assert.equal(res.status, 200, res.status === 200 ? "" : await res.text());
  return Buffer.from(await res.arrayBuffer());
}

const floorOf = async (f: F, vm: string) => (await ok<{ floor: Record<string, string> }>(f.call("admin", "GET", `/v1/vms/${vm}/vtime`))).floor;

/** The entries of a bundle: [manifest, signature, ...files]. */
function entries(bundle: Buffer): Array<{ name: string; data: Buffer }> {
  const out: Array<{ name: string; data: Buffer }> = [];
  for (let at = 0; at + BLOCK <= bundle.length; ) {
    const h = bundle.subarray(at, at + BLOCK);
    if (h.every((b) => b === 0)) break;
    const size = Number.parseInt(h.toString("ascii", 124, 136).replace(/\0.*$/s, ""), 8);
    out.push({ name: h.toString("latin1", 0, 100).replace(/\0.*$/s, ""), data: bundle.subarray(at + BLOCK, at + BLOCK + size) });
    at += BLOCK + Math.ceil(size / BLOCK) * BLOCK;
  }
  return out;
}

/** A bundle archive of these manifest and signature entries, then `files`. */
function packed(manifest: Buffer, sig: Buffer, files: Array<{ name: string; data: Buffer }>): Buffer {
  const parts: Buffer[] = [];
  for (const e of [{ name: "vigil-bundle.json", data: manifest }, { name: "vigil-bundle.sig", data: sig }, ...files]) parts.push(fileHeader(e.name, BigInt(e.data.length)), e.data, padding(BigInt(e.data.length)));
  parts.push(END);
  return Buffer.concat(parts);
}

/** The same bundle with its manifest changed by `edit` and signed again by `key`. */
function resigned(bundle: Buffer, key: KeyObject, edit: (m: Record<string, unknown>) => void): Buffer {
  const [manifest, , ...files] = entries(bundle);
  const m = JSON.parse(manifest!.data.toString()) as Record<string, unknown>;
  edit(m);
  const bytes = Buffer.from(canonicalJson(m));
  return packed(bytes, signatureEntry(keyIdOf(createPublicKey(key)), sign(null, bundleSignedBytes(bytes), key).toString("base64")), files);
}

const siteKey = (f: F) => createPrivateKey(readFileSync(join(f.home, "keys", "site-ed25519.pem")));

test("clone needs the right to export the source: an auditor who is also an owner cannot copy another tenant's VM", async (t) => {
  const f = await fixture(t);
  await f.vm("bobs", "bob");
  // Review F2: eve may read every VM (auditor) and create VMs (owner); export of bob's VM is refused, and so is
  // the same data out through a clone.
  await refused(f.call("eve", "POST", "/v1/vms/bobs/export", {}), 403, /vm\.export/);
  await refused(f.call("eve", "POST", "/v1/vms/bobs/clone", { name: "evescopy", mode: "full" }), 403, /vm\.export/);
  assert.deepEqual(await f.vmNames(), ["bobs"], "no copy was made");
  // bob clones his own VM, and the copy is his.
  const c = await ok<{ owner: string }>(f.call("bob", "POST", "/v1/vms/bobs/clone", { name: "bobscopy", mode: "full" }), 201);
  assert.equal(c.owner, "user:bob");
});

test("a clone keeps its source's security floor, and a clone from a snapshot below it is a revert: force and a reason", async (t) => {
  const f = await fixture(t);
  await f.vm("web", "bob");
  await ok(f.call("bob", "POST", "/v1/vms/web/snapshots", { name: "old" }), 201);
  await ok(f.call("bob", "PUT", "/v1/vms/web/floor", { facts: { patchLevel: "5" } }));
  await refused(f.call("bob", "POST", "/v1/vms/web/snapshots/old/revert", {}), 422, /below the security floor/);

  await ok(f.call("bob", "POST", "/v1/vms/web/clone", { name: "copy", mode: "full" }), 201);
  assert.deepEqual(await floorOf(f, "copy"), { patchLevel: "5" }, "the clone has the source's floor");

  await refused(f.call("bob", "POST", "/v1/vms/web/clone", { name: "fromold", mode: "full", fromSnapshot: "old" }), 422, /Cannot clone VM "web" from snapshot "old": it is below the security floor/);
  await refused(f.call("bob", "POST", "/v1/vms/web/clone", { name: "fromold", mode: "full", fromSnapshot: "old", force: true }), 400, /needs a reason/);
  assert.deepEqual(await f.vmNames(), ["copy", "web"], "refused clones leave nothing");
  await ok(f.call("bob", "POST", "/v1/vms/web/clone", { name: "fromold", mode: "full", fromSnapshot: "old", force: true, reason: "forensics on the old state" }), 201);
  assert.deepEqual(await floorOf(f, "fromold"), { patchLevel: "5" }, "a forced clone still keeps the floor");
});

test("image list shows a template only to those who may read it, and only the linked clones they may read", async (t) => {
  const f = await fixture(t);
  await f.vm("base", "bob");
  await ok(f.call("bob", "POST", "/v1/vms/base/template", {}));
  await ok(f.call("admin", "POST", "/v1/vms/base/clone", { name: "adminsclone" }), 201);
  await ok(f.call("bob", "POST", "/v1/vms/base/clone", { name: "bobsclone" }), 201);
  const templates = async (who: string) =>
    (await ok<{ images: Array<{ name: string; kind: string; details: { linkedClones?: string[] } }> }>(f.call(who, "GET", "/v1/images"))).images
      .filter((i) => i.kind === "template")
      .map((i) => [i.name, i.details.linkedClones]);
  assert.deepEqual(await templates("carol"), [], "carol sees no template of bob's");
  assert.deepEqual(await templates("bob"), [["base", ["bobsclone"]]], "bob sees his template, not admin's clone of it");
  assert.deepEqual(await templates("audrey"), [["base", ["adminsclone", "bobsclone"]]], "an auditor reads every VM");
});

test("export/import carries the floor and each snapshot's resumes; a replay is refused unless allowed", async (t) => {
  const f = await fixture(t);
  const webId = await f.vm("web", "bob");
  await ok(f.call("bob", "POST", "/v1/vms/web/snapshots", { name: "old" }), 201);
  await ok(f.call("bob", "POST", "/v1/vms/web/snapshots", { name: "once" }), 201);
  // "once" stands for a single-use memory snapshot that was resumed once already (booting QEMU is not needed
  // for what export and import do with it).
  f.sql("UPDATE snapshots SET kind = 'memory', single_use = 1, resumed_count = 1 WHERE vm_id = ? AND name = 'once'", webId);
  await ok(f.call("bob", "PUT", "/v1/vms/web/floor", { facts: { patchLevel: "5" } }));
  const bundle = await exportBundle(f, "bob", "web", { withSnapshots: true });

  // host= is the cluster manager's to take off: a host's daemon refuses it rather than ignoring it.
  await refused(f.call("bob", "POST", "/v1/vms/import?name=copy&host=h2", bundle), 400, /host= picks the host on a cluster manager/);
  await ok(f.call("bob", "POST", "/v1/vms/import?name=copy", bundle), 201);
  assert.deepEqual(await floorOf(f, "copy"), { patchLevel: "5" }, "the import has the exported VM's floor");
  await refused(f.call("bob", "POST", "/v1/vms/copy/snapshots/old/revert", {}), 422, /below the security floor/);
  const snaps = (await ok<{ snapshots: Array<{ name: string; kind: string; singleUse: boolean; resumedCount: number }> }>(f.call("bob", "GET", "/v1/vms/copy/snapshots"))).snapshots;
  const once = snaps.find((s) => s.name === "once")!;
  assert.deepEqual([once.kind, once.singleUse, once.resumedCount], ["memory", true, 1], "the copy of a resumed single-use snapshot is resumed too");
  await refused(f.call("bob", "POST", "/v1/vms/copy/snapshots/once/revert", { force: true, reason: "try it anyway" }), 422, /single-use and was resumed already/);

  // The same bundle again: a replay.
  await refused(f.call("bob", "POST", "/v1/vms/import?name=copy2", bundle), 409, /imported already/);
  assert.deepEqual(await f.vmNames(), ["copy", "web"]);
  const again = await ok<{ id: string }>(f.call("bob", "POST", "/v1/vms/import?name=copy2&allowReplay=true", bundle), 201);
  const { records } = await ok<{ records: Array<{ action: string; targetId?: string; target?: { id?: string }; details: { allowReplay?: boolean } }> }>(f.call("admin", "GET", "/v1/audit?tail=true&limit=20"));
  assert.ok(records.some((r) => r.action === "vm.import" && r.details.allowReplay === true), "the replay is audited as such");
  assert.ok(again.id);
});

test("two imports of one bundle at the same time are one import and one refused replay", async (t) => {
  const f = await fixture(t);
  await f.vm("web", "bob");
  const bundle = await exportBundle(f, "bob", "web");
  const token = (await f.daemon.deps.users.issueToken("bob", "concurrent")).token;
  // Each body delivers the manifest and signature, then waits: both imports pass the replay check before either
  // has finished (and recorded itself); only the claim taken at that check tells them apart.
  const [manifest, sig] = entries(bundle);
  const head = [manifest!, sig!].reduce((n, e) => n + BLOCK + Math.ceil(e.data.length / BLOCK) * BLOCK, 0);
  let release!: () => void;
  const released = new Promise<void>((r) => (release = r));
  const body = () =>
    new ReadableStream<Uint8Array>({
      async start(c) {
        c.enqueue(bundle.subarray(0, head));
        await released;
        c.enqueue(bundle.subarray(head));
        c.close();
      },
    });
  const importAs = (name: string) =>
    Promise.resolve(f.daemon.app.request(`/v1/vms/import?name=${name}`, { method: "POST", headers: { authorization: `Bearer ${token}`, "content-type": "application/x-vigil-bundle" }, body: body(), duplex: "half" } as RequestInit, { transport: "tcp" }));
  const first = importAs("one");
  const second = importAs("two");
  await new Promise((r) => setTimeout(r, 500));
  release();
  const statuses = await Promise.all([first, second].map(async (r) => (await r).status));
  assert.deepEqual(statuses.sort(), [201, 409], "one import, one refused");
  assert.equal((await f.vmNames()).filter((n) => n === "one" || n === "two").length, 1);
});

test("a bundle is checked whole before anything exists: dangling resume, unlisted parent, foreign site, expiry", async (t) => {
  const f = await fixture(t);
  await f.vm("web", "bob");
  await ok(f.call("bob", "POST", "/v1/vms/web/snapshots", { name: "s1" }), 201);
  const bundle = await exportBundle(f, "bob", "web", { withSnapshots: true });
  const key = siteKey(f);
  const partner = generateKeyPairSync("ed25519");
  await ok(f.call("admin", "POST", "/v1/trust", { name: "partner", publicKey: partner.publicKey.export({ type: "spki", format: "pem" }).toString() }), 201);

  const cases: Array<[string, Buffer, number, RegExp]> = [
    // (Before, this one was refused only after the VM had been made, and the VM stayed.)
    ["a resume point the bundle does not list", resigned(bundle, key, (m) => (m.resume = "nope")), 400, /resumes from snapshot "nope", which it does not (list|contain)/],
    ["a resume point that is a disk snapshot", resigned(bundle, key, (m) => (m.resume = "s1")), 400, /is a disk snapshot/],
    ["a parent the bundle does not list", resigned(bundle, key, (m) => ((m.snapshots as Array<{ parent: string | null }>)[0]!.parent = "ghost")), 400, /names parent "ghost"/],
    ["a manifest naming another site than its signer", resigned(bundle, partner.privateKey, () => undefined), 400, /but key "[0-9a-f]{16}" signed it/],
    ["an expired bundle", resigned(bundle, key, (m) => (m.expiresAt = "2020-01-01T00:00:00.000Z")), 422, /expired at 2020-01-01/],
  ];
  await refusedLeavingNothing(f, cases);
  // Parents listed after their children still make a tree (order-independent).
  await ok(f.call("bob", "POST", "/v1/vms/web/snapshots", { name: "s2" }), 201);
  const two = await exportBundle(f, "bob", "web", { withSnapshots: true });
  const reversed = resigned(two, key, (m) => (m.snapshots as unknown[]).reverse());
  await ok(f.call("bob", "POST", "/v1/vms/import?name=tree", reversed), 201);
  const tree = (await ok<{ snapshots: Array<{ name: string; parent: string | null }> }>(f.call("bob", "GET", "/v1/vms/tree/snapshots"))).snapshots;
  assert.deepEqual(tree.map((s) => [s.name, s.parent]).sort(), [["s1", null], ["s2", "s1"]]);
});

async function refusedLeavingNothing(f: F, cases: Array<[string, Buffer, number, RegExp]>): Promise<void> {
  const vmsDir = join(f.home, "vms");
  const dirsBefore = readdirSync(vmsDir).sort();
  const namesBefore = await f.vmNames();
  for (const [what, bytes, status, message] of cases) {
    await refused(f.call("bob", "POST", "/v1/vms/import?name=hostile", bytes), status, message);
    assert.deepEqual(await f.vmNames(), namesBefore, `${what}: nothing in the inventory`);
    assert.deepEqual(readdirSync(vmsDir).sort(), dirsBefore, `${what}: nothing on disk`);
  }
}

test("nothing may follow a bundle's end-of-archive marker, and the marker must be whole", async (t) => {
  const f = await fixture(t);
  await f.vm("web", "bob");
  const bundle = await exportBundle(f, "bob", "web");
  await refusedLeavingNothing(f, [
    ["one byte after the end-of-archive marker", Buffer.concat([bundle, Buffer.from("x")]), 400, /after the end-of-archive marker/],
    ["a zero block after the end-of-archive marker", Buffer.concat([bundle, Buffer.alloc(BLOCK)]), 400, /after the end-of-archive marker/],
    ["a zero block short of the end-of-archive marker", bundle.subarray(0, bundle.length - BLOCK), 400, /truncated in the end-of-archive marker/],
  ]);
  await ok(f.call("bob", "POST", "/v1/vms/import?name=fine", bundle), 201);
});

test("export follows the backing chain vigil recorded, not the one a disk header claims", async (t) => {
  const f = await fixture(t);
  const id = await f.vm("web", "bob");
  const outside = mkdtempSync(join(tmpdir(), "vigil-outside-"));
  t.after(() => rmSync(outside, { recursive: true, force: true }));
  const secret = join(outside, "secret.qcow2");
  execFileSync("qemu-img", ["create", "-q", "-f", "qcow2", secret, "16M"]);
  const top = join(f.home, "vms", id, "disks", "data.qcow2");
  // What a compromised QEMU can do to the overlay it writes: point its backing file anywhere.
  for (const [backing, format, message] of [
    [secret, "qcow2", /names backing file ".*secret\.qcow2", which is not one of this VM's recorded disks/],
    ["/etc/shadow", "raw", /has backing format "raw", not qcow2/],
    [`json:{"file":{"driver":"file","filename":"${secret}"}}`, "qcow2", /json: block graph/],
  ] as const) {
    execFileSync("qemu-img", ["rebase", "-u", "-f", "qcow2", "-b", backing, "-F", format, top]);
    await refused(f.call("bob", "POST", "/v1/vms/web/export", {}), 422, message);
    assert.deepEqual(readdirSync(join(f.home, "vms")).filter((d) => d.startsWith("export-")), [], "no staging left");
  }
  execFileSync("qemu-img", ["rebase", "-u", "-f", "qcow2", "-b", "", top]);
  const good = await exportBundle(f, "bob", "web");
  assert.equal(entries(good).length, 3, "the plain disk exports: manifest, signature, one layer");
  assert.equal(createHash("sha256").update(good).digest("hex").length, 64);
  assert.ok(existsSync(top));
});

test("one site key, two protocols: an audit tree-head signature is no bundle signature, and a bundle signature covers no audit statement", async (t) => {
  const f = await fixture(t);
  await f.vm("web", "bob");
  const bundle = await exportBundle(f, "bob", "web");
  const [manifest, sigEntry, ...files] = entries(bundle);
  const pub = createPublicKey(siteKey(f));
  await f.daemon.deps.audit.append({ actor: "test", action: "test.head", target: { kind: "host" }, result: "ok" });
  const { head } = await ok<{ head: { keyId: string; signature: string } & Parameters<typeof treeHeadBytes>[0] }>(f.call("admin", "GET", "/v1/audit/head"));

  // The site's own signed tree head, presented as the manifest and its signature: refused at the signature check.
  const forged = packed(treeHeadBytes(head), signatureEntry(head.keyId, head.signature), files);
  await refusedLeavingNothing(f, [["a tree head as a manifest", forged, 400, /signature does not verify/]]);

  // The bundle's signature verifies only over the bundle context + manifest: not over the bare JSON (what the
  // pre-Merkle audit statements were signed over) nor as anything prefixed with the audit context.
  const sig = Buffer.from((JSON.parse(sigEntry!.data.toString()) as { signature: string }).signature, "base64");
  assert.equal(verify(null, bundleSignedBytes(manifest!.data), pub, sig), true, "the control: it is a good signature");
  assert.equal(verify(null, manifest!.data, pub, sig), false, "a bundle signature is not a signature of bare JSON");
  assert.equal(verify(null, Buffer.concat([Buffer.from(`${TREE_HEAD_CONTEXT}\0`), manifest!.data]), pub, sig), false);
  assert.equal(verifyTreeHead({ ...head, signature: sig.toString("base64") }, pub), false, "nor does it verify as a tree head");
});

test("a bundle signed the version-1 way (the bare manifest, no context) is refused with an error naming the version", async (t) => {
  const f = await fixture(t);
  await f.vm("web", "bob");
  const bundle = await exportBundle(f, "bob", "web");
  const [manifest, , ...files] = entries(bundle);
  const key = siteKey(f);
  const v1 = Buffer.from(JSON.stringify({ algorithm: "ed25519", keyId: keyIdOf(createPublicKey(key)), signature: sign(null, manifest!.data, key).toString("base64") }));
  const res = await f.call("bob", "POST", "/v1/vms/import?name=old", packed(manifest!.data, v1, files));
  const body = (await res.json()) as { error: { code: string; field?: string; message: string } };
  assert.equal(res.status, 400, JSON.stringify(body));
  assert.equal(body.error.field, "version");
  assert.match(body.error.message, /signature is version 1 .*export the VM again/);
  assert.deepEqual(await f.vmNames(), ["web"]);
  await ok(f.call("bob", "POST", "/v1/vms/import?name=new", bundle), 201);
});

test("the firewall policy follows the VM: a clone starts with its source's, a bundle carries it, an older bundle imports with the default", async (t) => {
  const f = await fixture(t);
  await f.vm("web", "bob");
  const policy = { rules: [{ direction: "in", action: "accept", proto: "tcp", ports: "443", peer: { label: "tier=front" } }], defaults: { in: "drop", out: "drop" } };
  await ok(f.call("bob", "PUT", "/v1/vms/web/firewall", policy));
  await ok(f.call("bob", "POST", "/v1/vms/web/firewall/rules", { rule: { direction: "out", action: "accept", proto: "udp", ports: "53" } }));
  const current = (await ok<{ policy: unknown; version: number }>(f.call("bob", "GET", "/v1/vms/web/firewall"))).policy;
  type History = { versions: Array<{ version: number; policy: unknown; actor: string }> };

  const clone = await ok<{ id: string }>(f.call("bob", "POST", "/v1/vms/web/clone", { name: "copy", mode: "full" }), 201);
  const h = await ok<History>(f.call("bob", "GET", "/v1/vms/copy/firewall/history"));
  assert.deepEqual(h.versions.map((v) => [v.version, v.policy, v.actor]), [[1, current, "bob"]], "version 1 of the clone is the source's current policy");
  const { records } = await ok<{ records: Array<{ action: string; target: { id?: string }; details: { version?: number; summary?: string } }> }>(f.call("admin", "GET", "/v1/audit?tail=true&limit=50"));
  assert.ok(records.some((r) => r.action === "fw.change" && r.target.id === clone.id && r.details.version === 1 && /clone source VM web/.test(r.details.summary ?? "")), "audited");

  const bundle = await exportBundle(f, "bob", "web");
  const [manifest] = entries(bundle);
  assert.deepEqual((JSON.parse(manifest!.data.toString()) as { vm: { firewall: unknown } }).vm.firewall, current, "in the signed manifest");
  await ok(f.call("bob", "POST", "/v1/vms/import?name=imported", bundle), 201);
  assert.deepEqual((await ok<History>(f.call("bob", "GET", "/v1/vms/imported/firewall/history"))).versions.map((v) => [v.version, v.policy]), [[1, current]]);

  // An older bundle (no firewall in its manifest) imports with the default policy; a bad policy refuses the import.
  const key = siteKey(f);
  const older = resigned(bundle, key, (m) => delete (m.vm as Record<string, unknown>).firewall);
  await ok(f.call("bob", "POST", "/v1/vms/import?name=older&allowReplay=true", older), 201);
  const shown = await ok<{ version: number; policy: unknown }>(f.call("bob", "GET", "/v1/vms/older/firewall"));
  assert.deepEqual([shown.version, shown.policy], [0, { rules: [], defaults: { in: "drop", out: "accept" } }]);
  const bad = resigned(bundle, key, (m) => ((m.vm as Record<string, unknown>).firewall = { rules: [{ direction: "sideways" }], defaults: { in: "drop", out: "accept" } }));
  await refused(f.call("bob", "POST", "/v1/vms/import?name=badfw&allowReplay=true", bad), 400, /Invalid firewall policy: "rules.0.direction"/);
  assert.deepEqual(await f.vmNames(), ["copy", "imported", "older", "web"], "a refused import leaves nothing");
});

test("a clone of the current disk has the source's posture (not its own policy); one from a snapshot starts unscanned", async (t) => {
  const f = await fixture(t);
  const id = await f.vm("web", "bob");
  await ok(f.call("bob", "POST", "/v1/vms/web/snapshots", { name: "s1" }), 201);
  const posture = new PostureRepository(f.daemon.repo.db);
  await posture.recordScan(id, { scannedAt: new Date().toISOString(), how: "offline", advisoriesSha256: "a", rulesSha256: "b", complete: true, packages: [], pending: [], findings: [{ path: "/bin/x", rule: "eicar", pattern: "$a", offset: 0, excerptHex: "00" }], notes: [], elapsedMs: 1 });
  await ok(f.call("admin", "PUT", "/v1/posture/policies/vm:web", { gate: true, maxScanAgeDays: 1, vulnerableAt: "low" }));
  const stateOf = async (vm: string) => ok<{ state: string; policy: { scope: string }; lastScan: { findings: unknown[] } | null }>(f.call("bob", "GET", `/v1/vms/${vm}/posture`));
  assert.equal((await stateOf("web")).state, "infected");
  await ok(f.call("bob", "POST", "/v1/vms/web/clone", { name: "copy", mode: "full" }), 201);
  const copy = await stateOf("copy");
  assert.equal(copy.state, "infected", "the copy of an infected disk is infected");
  assert.equal(copy.lastScan?.findings.length, 1);
  assert.equal(copy.policy.scope, "default", "the source's own policy stays the source's");
  await ok(f.call("bob", "POST", "/v1/vms/web/clone", { name: "older", mode: "full", fromSnapshot: "s1" }), 201);
  assert.deepEqual([(await stateOf("older")).state, (await stateOf("older")).lastScan], ["unknown", null]);
  // Destroyed, the VM takes its own policy along: a new VM of the same name does not inherit it.
  const scopes = async () => (await ok<{ policies: { scope: string }[] }>(f.call("admin", "GET", "/v1/posture/policies"))).policies.map((p) => p.scope);
  assert.ok((await scopes()).includes("vm:web"));
  await ok(f.call("bob", "DELETE", "/v1/vms/web"));
  assert.ok(!(await scopes()).includes("vm:web"), "the destroyed VM's policy is gone");
});

test("tasks: an export is a running task until its last byte is read; a user sees their own tasks, an auditor everyone's", async (t) => {
  const f = await fixture(t);
  await f.vm("web", "bob");
  type T = { requestId: string; actor: string; method: string; path: string; state: string; status?: number; durationMs?: number };
  const tasks = async (who: string) => (await ok<{ tasks: T[] }>(f.call(who, "GET", "/v1/tasks"))).tasks;
  const res = await f.call("bob", "POST", "/v1/vms/web/export", {}, { "x-request-id": "export-1" });
  assert.equal(res.status, 200);
  // The answer's head is here, its body not read yet: still running.
  assert.deepEqual((await tasks("bob")).filter((x) => x.requestId === "export-1").map((x) => [x.state, x.path]), [["running", "/v1/vms/web/export"]]);
  const bytes = Buffer.from(await res.arrayBuffer());
  assert.ok(bytes.length > 0);
  const done = (await tasks("bob")).find((x) => x.requestId === "export-1")!;
  assert.deepEqual([done.state, done.status, done.actor, typeof done.durationMs], ["ok", 200, "bob", "number"]);
  // A refused change is a failed task; reads are no tasks.
  await refused(f.call("carol", "POST", "/v1/vms/web/start", {}, { "x-request-id": "carol-try" }), 404, /does not exist/); // hidden from her
  assert.deepEqual((await tasks("carol")).map((x) => [x.requestId, x.state, x.status]), [["carol-try", "failed", 404]], "carol sees only her own");
  assert.ok(!(await tasks("bob")).some((x) => x.actor === "carol"), "bob does not see carol's");
  const all = await tasks("audrey");
  assert.ok(all.some((x) => x.requestId === "export-1") && all.some((x) => x.requestId === "carol-try"), "an auditor sees everyone's");
  assert.ok(all.every((x) => x.method !== "GET"));
});
