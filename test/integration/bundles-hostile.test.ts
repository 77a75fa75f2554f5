/**
 * Hostile bundles: every way a .vigil file can lie is refused with a clear error, and leaves nothing behind —
 * no VM in the inventory, no directory under vms/. The attacker here even holds a key the site trusts, to show
 * that a trusted signature does not excuse a bundle that contradicts itself. And the other direction: an export
 * carries no internal snapshot its manifest does not list, in any layer (a linked clone's template layer once
 * shipped the template's memory snapshot — another VM's RAM).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { createHash, generateKeyPairSync, sign, type KeyObject } from "node:crypto";
import { spawnSync } from "node:child_process";
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { canonicalJson } from "../../src/audit/canonical-json.ts";
import { keyIdOf } from "../../src/audit/site-key.ts";
import { BLOCK, END, fileHeader, padding } from "../../src/storage/bundle/tar.ts";
import { bundleSignedBytes, signatureEntry } from "../../src/storage/bundle/format.ts";
import { compressFile } from "../../src/storage/bundle/zstd.ts";
import { requireTinyImage, startDaemon } from "../harness.ts";

interface Entry {
  name: string;
  data: Buffer;
  /** Overrides the size written in the tar header (a header that lies). */
  headerSize?: bigint;
}

function unpack(buf: Buffer): Entry[] {
  const out: Entry[] = [];
  let at = 0;
  while (at + BLOCK <= buf.length) {
    const h = buf.subarray(at, at + BLOCK);
    if (h.every((b) => b === 0)) break;
    const name = h.toString("latin1", 0, 100).replace(/\0.*$/s, "");
    const size = Number.parseInt(h.toString("ascii", 124, 136).replace(/\0.*$/s, ""), 8);
    out.push({ name, data: buf.subarray(at + BLOCK, at + BLOCK + size) });
    at += BLOCK + Math.ceil(size / BLOCK) * BLOCK;
  }
  return out;
}

function pack(entries: Entry[]): Buffer {
  const parts: Buffer[] = [];
  for (const e of entries) {
    parts.push(fileHeader(e.name, e.headerSize ?? BigInt(e.data.length)), e.data, padding(BigInt(e.data.length)));
  }
  parts.push(END);
  return Buffer.concat(parts);
}

/** Runs a host tool; fails the test with its stderr if it fails. */
function run(cmd: string, args: string[]): string {
  const r = spawnSync(cmd, args, { encoding: "utf8" });
  assert.equal(r.status, 0, `${cmd} ${args.join(" ")}: ${r.stderr}`);
  return r.stdout;
}

/** Decompresses a bundle's layer into `dir` as a plain qcow2 file. */
function extractLayer(dir: string, e: Entry): string {
  const zst = join(dir, e.name.replace(/^files\//, ""));
  writeFileSync(zst, e.data);
  const out = zst.replace(/\.zst$/, "");
  run("zstd", ["-q", "-d", "-f", "-o", out, zst]);
  return out;
}

/** The internal snapshot names of a qcow2 file, as qemu-img itself sees them (`-U`, no backing file needed). */
function qemuImgSnapshots(file: string): string[] {
  const info = JSON.parse(run("qemu-img", ["info", "-U", "--output=json", file])) as { snapshots?: Array<{ name: string }> };
  const listed = run("qemu-img", ["snapshot", "-U", "-l", file]);
  const names = (info.snapshots ?? []).map((s) => s.name);
  for (const n of names) assert.ok(listed.includes(n), `qemu-img snapshot -l lists ${n}`);
  assert.equal(names.length === 0, listed.trim() === "", "qemu-img info and snapshot -l agree");
  return names;
}

interface BundleManifest {
  snapshots: Array<{ name: string }>;
  files: Array<{ name: string; disk: string; layer: number; size: number; sha256: string; rawSize: number }>;
}

/** Every layer of a bundle with the snapshots qemu-img finds in it. */
function layersOf(bundle: string, dir: string): { manifest: BundleManifest; layers: Array<{ name: string; top: boolean; snapshots: string[] }> } {
  const entries = unpack(readFileSync(bundle));
  const manifest = JSON.parse(entries[0]!.data.toString()) as BundleManifest;
  const layers = entries.slice(2).map((e) => {
    const f = manifest.files.find((x) => `files/${x.name}` === e.name)!;
    const top = f.layer === Math.max(...manifest.files.filter((x) => x.disk === f.disk).map((x) => x.layer));
    return { name: f.name, top, snapshots: qemuImgSnapshots(extractLayer(dir, e)) };
  });
  return { manifest, layers };
}

function signed(manifest: unknown, key: KeyObject, pub: KeyObject): Entry[] {
  const bytes = Buffer.from(canonicalJson(manifest));
  const sig = signatureEntry(keyIdOf(pub), sign(null, bundleSignedBytes(bytes), key).toString("base64"));
  return [
    { name: "vigil-bundle.json", data: bytes },
    { name: "vigil-bundle.sig", data: sig },
  ];
}

test("hostile bundles are refused and leave nothing behind", { timeout: 300_000 }, async (t) => {
  requireTinyImage();
  const d = await startDaemon(t);
  t.after(() => {
    if (d.process.exitCode !== null) console.error(d.log());
  });
  await d.api("POST", "/v1/vms", { name: "src", memoryMiB: 128 });
  const good = join(d.home, "good.vigil");
  assert.equal(d.cli("vm", "export", "src", "-o", good).status, 0);
  const entries = unpack(readFileSync(good));
  assert.deepEqual(entries.slice(0, 2).map((e) => e.name), ["vigil-bundle.json", "vigil-bundle.sig"]);
  const manifest = JSON.parse(entries[0]!.data.toString()) as { files: Array<{ name: string; size: number; sha256: string; rawSize: number }> };
  const files = entries.slice(2);

  // A second site whose key this site trusts — the attacker signs self-contradicting bundles with it.
  const trusted = generateKeyPairSync("ed25519");
  await d.api("POST", "/v1/trust", { name: "partner", publicKey: trusted.publicKey.export({ type: "spki", format: "pem" }).toString() });
  const stranger = generateKeyPairSync("ed25519");
  // The attacker's manifests name the attacker's site, as they must (a manifest naming another site than its
  // signer is refused on its own).
  const asSigner = (m: unknown, keys: { publicKey: KeyObject }) => ({ ...(m as Record<string, unknown>), site: { ...(m as { site: object }).site, keyId: keyIdOf(keys.publicKey) } });
  const withManifest = (m: unknown, rest: Entry[] = files, keys = trusted) => pack([...signed(asSigner(m, keys), keys.privateKey, keys.publicKey), ...rest]);
  const clone = <T>(x: T): T => JSON.parse(JSON.stringify(x)) as T;

  const biggest = files.reduce((a, b) => (b.data.length > a.data.length ? b : a));
  const flipped = files.map((f) => (f === biggest ? { ...f, data: Buffer.from(f.data.map((b, i) => (i === f.data.length >> 1 ? b ^ 0x01 : b))) } : f));
  const lyingSha = clone(manifest);
  lyingSha.files[0]!.sha256 = createHash("sha256").update("something else").digest("hex");
  const lyingRaw = clone(manifest);
  lyingRaw.files[0]!.rawSize = 1; // decompresses to more than declared
  const traversal = clone(manifest);
  traversal.files[0]!.name = "../../../etc/cron.d/x";
  const goodBytes = readFileSync(good);
  // A layer that carries an internal snapshot the manifest does not list (data smuggled past the manifest),
  // re-signed by the trusted key with correct hashes: only a look inside the qcow2 can catch it.
  const work = mkdtempSync(join(tmpdir(), "vigil-smuggle-"));
  t.after(() => rmSync(work, { recursive: true, force: true }));
  const layer0 = extractLayer(work, files[0]!);
  run("qemu-img", ["snapshot", "-c", "smuggled", layer0]);
  const recompressed = await compressFile(layer0, join(work, "smuggled.zst"));
  const smuggling = clone(manifest);
  Object.assign(smuggling.files[0]!, { size: recompressed.size, sha256: recompressed.sha256, rawSize: recompressed.rawSize });
  const smuggled = withManifest(smuggling, files.map((f, i) => (i === 0 ? { ...f, data: readFileSync(join(work, "smuggled.zst")) } : f)));

  // The headline attacks of a trusted but hostile signer (review T3): layers whose headers would make this host's
  // QEMU open a file of the signer's choosing, with correct hashes and a valid signature.
  const relayered = async (index: number, tag: string, change: (file: string) => string) => {
    const sub = join(work, tag);
    mkdirSync(sub);
    const file = change(extractLayer(sub, files[index]!));
    const zst = join(sub, `${tag}.zst`);
    const r = await compressFile(file, zst);
    const m = clone(manifest);
    Object.assign(m.files[index]!, { size: r.size, sha256: r.sha256, rawSize: r.rawSize });
    return withManifest(m, files.map((f, i) => (i === index ? { ...f, data: readFileSync(zst) } : f)));
  };
  assert.ok(files.length >= 2, "the source VM's disk has its image's layer and its own");
  const shadowBacked = await relayered(0, "shadow", (file) => {
    run("qemu-img", ["rebase", "-u", "-f", "qcow2", "-b", "/etc/shadow", "-F", "raw", file]);
    return file;
  });
  const externalData = await relayered(0, "extdata", (_file) => {
    const ext = join(work, "extdata", "ext.qcow2");
    run("qemu-img", ["create", "-q", "-f", "qcow2", "-o", `data_file=${join(work, "extdata", "ext.raw")}`, ext, "16M"]);
    return ext;
  });
  const jsonBacked = await relayered(1, "json", (file) => {
    run("qemu-img", ["rebase", "-u", "-f", "qcow2", "-b", 'json:{"file":{"driver":"file","filename":"/etc/shadow"}}', "-F", "qcow2", file]);
    return file;
  });
  const rawBacked = await relayered(1, "raw", (file) => {
    run("qemu-img", ["rebase", "-u", "-f", "qcow2", "-b", "/etc/shadow", "-F", "raw", file]);
    return file;
  });
  const dangling = clone(manifest) as unknown as { resume: string | null };
  dangling.resume = "nope";

  const cases: Array<[string, Buffer, RegExp]> = [
    ["flipped byte in a disk", pack([...entries.slice(0, 2), ...flipped]), /does not match its sha256/],
    ["truncated archive", goodBytes.subarray(0, goodBytes.length - BLOCK * 3 - Math.floor(biggest.data.length / 2)), /truncated|Invalid bundle/],
    ["manifest changed after signing", pack([{ name: "vigil-bundle.json", data: Buffer.from(entries[0]!.data.toString().replace('"src"', '"evil"')) }, entries[1]!, ...files]), /signature does not verify/],
    ["manifest hash mismatch (trusted signer)", withManifest(lyingSha), /does not match its sha256/],
    ["manifest lies about decompressed size", withManifest(lyingRaw), /decompresses to more than/],
    ["unknown signer", withManifest(manifest, files, stranger), /does not trust/],
    ["../ in a manifest file name", withManifest(traversal), /Invalid bundle manifest|must be a plain file name/],
    ["../ as a tar entry name", withManifest(manifest, files.map((f, i) => (i === 0 ? { ...f, name: "files/../../x" } : f))), /expected entry/],
    ["entry declared 1 KiB but 10 GiB long", withManifest(manifest, files.map((f, i) => (i === 0 ? { ...f, headerSize: 10n * 1024n ** 3n } : f))), /is 10737418240 bytes long but the manifest declares/],
    ["an extra entry after the listed files", pack([...signed(asSigner(manifest, trusted), trusted.privateKey, trusted.publicKey), ...files, { name: "files/extra", data: Buffer.from("x") }]), /unexpected entry/],
    ["an internal snapshot the manifest does not list", smuggled, /holds internal snapshot "smuggled" that the manifest does not list/],
    ["a bottom layer backed by /etc/shadow", shadowBacked, /names an unexpected backing file "\/etc\/shadow"/],
    ["a layer with an external data file", externalData, /keeps its data in an external file/],
    ["a json: backing name", jsonBacked, /json: block graph/],
    ["an upper layer whose backing format is raw", rawBacked, /its backing format is "raw", expected "qcow2"/],
    ["a resume point the bundle does not list", withManifest(dangling), /resumes from snapshot "nope", which it does not list/],
    ["a manifest naming another site than its signer", pack([...signed(manifest, trusted.privateKey, trusted.publicKey), ...files]), /but key "[0-9a-f]{16}" signed it/],
    ["a byte after the end-of-archive marker", Buffer.concat([goodBytes, Buffer.from("x")]), /after the end-of-archive marker/],
    ["not a bundle at all", Buffer.from("GIF89a this is not a tar file at all".padEnd(2048, "\0")), /Invalid bundle/],
  ];

  const vmsDir = join(d.home, "vms");
  const dirsBefore = readdirSync(vmsDir).sort();
  for (const [what, bytes, message] of cases) {
    const file = join(d.home, "hostile.vigil");
    writeFileSync(file, bytes);
    const r = d.cli("vm", "import", file, "--name", "hostile");
    assert.notEqual(r.status, 0, `${what}: must be refused`);
    assert.match(r.stderr, message, what);
    assert.doesNotMatch(r.stderr, /at .*\.(ts|js):\d+/, `${what}: no stack trace`);
    assert.deepEqual(readdirSync(vmsDir).sort(), dirsBefore, `${what}: nothing left on disk`);
    const { vms } = await d.api<{ vms: Array<{ name: string }> }>("GET", "/v1/vms");
    assert.deepEqual(vms.map((v) => v.name), ["src"], `${what}: nothing in the inventory`);
  }
  // The untouched bundle still imports: the refusals above were about the tampering, not the pipeline.
  assert.equal(d.cli("vm", "import", good, "--name", "fine").status, 0);
  void manifest.files;
});

test("exporting a linked clone carries no snapshot of its template's layer, with or without --with-snapshots", { timeout: 600_000 }, async (t) => {
  requireTinyImage();
  const d = await startDaemon(t);
  t.after(() => {
    if (d.process.exitCode !== null) console.error(d.log());
  });
  const work = mkdtempSync(join(tmpdir(), "vigil-layers-"));
  t.after(() => rmSync(work, { recursive: true, force: true }));
  const ok = (r: { status: number; stdout: string; stderr: string }, what: string) => assert.equal(r.status, 0, `${what}: ${r.stderr}`);

  // export --memory leaves the memory snapshot export-… (web's RAM) in web's disk; the import carries it
  // (listed: it is the resume point), and freezing the import as a template keeps it in the template's disk.
  await d.api("POST", "/v1/vms", { name: "web", memoryMiB: 128, vcpus: 1 });
  await d.api("POST", "/v1/vms/web/start", { wait: true });
  for (const sub of ["a", "b", "c"]) mkdirSync(join(work, sub));
  const withMemory = join(work, "web.vigil");
  ok(d.cli("vm", "export", "web", "--memory", "-o", withMemory), "export --memory");
  await d.api("POST", "/v1/vms/web/stop", {});
  const first = layersOf(withMemory, join(work, "a"));
  const resume = first.manifest.snapshots.map((s) => s.name);
  assert.equal(resume.length, 1);
  assert.match(resume[0]!, /^export-/);
  // Its saved RAM is resumed once in the whole lineage: by the import, so on web it counts as used already,
  // and a second import of the same bundle is refused — even when replays are allowed.
  const onWeb = (await d.api<{ snapshots: Array<{ name: string; singleUse: boolean; resumedCount: number }> }>("GET", "/v1/vms/web/snapshots")).snapshots;
  assert.deepEqual(onWeb.map((s) => [s.name, s.singleUse, s.resumedCount]), [[resume[0]!, true, 1]]);
  ok(d.cli("vm", "import", withMemory, "--name", "web2"), "import");
  const replay = d.cli("vm", "import", withMemory, "--name", "web2b");
  assert.notEqual(replay.status, 0);
  assert.match(replay.stderr, /imported already/);
  const allowed = d.cli("vm", "import", withMemory, "--name", "web2b", "--allow-replay");
  assert.notEqual(allowed.status, 0);
  assert.match(allowed.stderr, /single-use snapshot .* which its first import resumes/);
  ok(d.cli("vm", "template", "web2"), "template");
  ok(d.cli("vm", "clone", "web2", "web3"), "linked clone");

  // Every layer of every bundle made from the clone: a lower layer carries no snapshot at all, the top only
  // those the manifest lists.
  const check = (bundle: string, sub: string, expectTop: string[]) => {
    const { manifest, layers } = layersOf(bundle, join(work, sub));
    assert.ok(layers.length >= 2, `${sub}: the clone's bundle has its template's layer too (${layers.length} layers)`);
    assert.deepEqual(manifest.snapshots.map((s) => s.name).sort(), [...expectTop].sort(), `${sub}: the manifest's snapshots`);
    for (const l of layers) {
      assert.deepEqual(l.snapshots.sort(), l.top ? [...expectTop].sort() : [], `${sub}: internal snapshots of ${l.name}`);
    }
  };
  const plain = join(work, "web3.vigil");
  ok(d.cli("vm", "export", "web3", "-o", plain), "export of the linked clone");
  check(plain, "b", []);

  // --with-snapshots keeps the clone's own snapshot (in its top layer) and still none of the template's.
  await d.api("POST", "/v1/vms/web3/snapshots", { name: "own" });
  const withSnaps = join(work, "web3-snaps.vigil");
  ok(d.cli("vm", "export", "web3", "--with-snapshots", "-o", withSnaps), "export --with-snapshots");
  check(withSnaps, "c", ["own"]);

  // The source VMs are untouched (the snapshots were dropped from copies), and both bundles import.
  const template = await d.api<{ snapshots: Array<{ name: string }> }>("GET", "/v1/vms/web2/snapshots");
  assert.deepEqual(template.snapshots.map((s) => s.name), resume, "the template keeps its snapshot");
  ok(d.cli("vm", "import", plain, "--name", "web4"), "import of the plain bundle");
  ok(d.cli("vm", "import", withSnaps, "--name", "web5"), "import of the bundle with snapshots");
  const imported = await d.api<{ snapshots: Array<{ name: string }> }>("GET", "/v1/vms/web5/snapshots");
  assert.deepEqual(imported.snapshots.map((s) => s.name), ["own"]);
});
