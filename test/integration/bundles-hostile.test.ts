/**
 * Hostile bundles: every way a .vigil file can lie is refused with a clear error, and leaves nothing behind —
 * no VM in the inventory, no directory under vms/. The attacker here even holds a key the site trusts, to show
 * that a trusted signature does not excuse a bundle that contradicts itself.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { createHash, generateKeyPairSync, sign, type KeyObject } from "node:crypto";
import { readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { canonicalJson } from "../../src/audit/canonical-json.ts";
import { keyIdOf } from "../../src/audit/site-key.ts";
import { BLOCK, END, fileHeader, padding } from "../../src/storage/bundle/tar.ts";
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

function signed(manifest: unknown, key: KeyObject, pub: KeyObject): Entry[] {
  const bytes = Buffer.from(canonicalJson(manifest));
  const sig = Buffer.from(JSON.stringify({ algorithm: "ed25519", keyId: keyIdOf(pub), signature: sign(null, bytes, key).toString("base64") }));
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
  const withManifest = (m: unknown, rest: Entry[] = files, keys = trusted) => pack([...signed(m, keys.privateKey, keys.publicKey), ...rest]);
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
    ["an extra entry after the listed files", pack([...signed(manifest, trusted.privateKey, trusted.publicKey), ...files, { name: "files/extra", data: Buffer.from("x") }]), /unexpected entry/],
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
