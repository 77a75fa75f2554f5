/**
 * The Merkle tree against RFC 6962/9162's reference values (the Certificate Transparency test leaves and roots)
 * and against a naive transcription of the RFC's recursive definitions, for every size up to 40.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { consistencyPath, EMPTY_ROOT, Frontier, inclusionPath, leafHash, rangeHash, verifyConsistency, verifyInclusion, type NodeSource } from "./merkle.ts";

const hex = (b: Buffer) => b.toString("hex");
const unhex = (s: string) => Buffer.from(s, "hex");

// The reference leaves and tree heads used by the RFC 6962 implementations (sizes 1..8).
const CT_DATA = ["", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f"].map(unhex);
const CT_ROOTS = [
  "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
  "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
  "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
  "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
  "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
  "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
  "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
  "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
];
const CT_INCLUSION = [
  { index: 0, size: 8, path: ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7", "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e", "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"] },
  { index: 5, size: 8, path: ["bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b", "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0", "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"] },
];
const CT_CONSISTENCY = [
  { first: 2, second: 8, path: ["5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e", "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"] },
  { first: 6, second: 8, path: ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a", "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0", "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"] },
];

/** The RFC's definitions written out literally over an array of leaf hashes: the independent computation. */
const naiveNode = (l: Buffer, r: Buffer) => createHash("sha256").update(Buffer.concat([Buffer.of(1), l, r])).digest();
const k = (n: number) => 2 ** Math.ceil(Math.log2(n) - 1);
function mth(d: Buffer[]): Buffer {
  if (d.length === 0) return createHash("sha256").digest();
  if (d.length === 1) return d[0]!;
  return naiveNode(mth(d.slice(0, k(d.length))), mth(d.slice(k(d.length))));
}
function path(m: number, d: Buffer[]): Buffer[] {
  if (d.length <= 1) return [];
  const s = k(d.length);
  return m < s ? [...path(m, d.slice(0, s)), mth(d.slice(s))] : [...path(m - s, d.slice(s)), mth(d.slice(0, s))];
}
function subproof(m: number, d: Buffer[], b: boolean): Buffer[] {
  if (m === d.length) return b ? [] : [mth(d)];
  const s = k(d.length);
  return m <= s ? [...subproof(m, d.slice(0, s), b), mth(d.slice(s))] : [...subproof(m - s, d.slice(s), false), mth(d.slice(0, s))];
}

/** A tree built the way the audit log builds it: Frontier.push, every node it returns stored. */
function build(leaves: Buffer[]): { src: NodeSource; frontier: Frontier } {
  const nodes = new Map<string, Buffer>();
  const frontier = new Frontier();
  for (const l of leaves) for (const n of frontier.push(l)) nodes.set(`${n.level}/${n.index}`, n.hash);
  const src: NodeSource = {
    node: async (level, index) => {
      const h = nodes.get(`${level}/${index}`);
      if (!h) throw new Error(`no node ${level}/${index}`);
      return h;
    },
  };
  return { src, frontier };
}

test("the RFC 6962 reference roots, inclusion and consistency proofs", async () => {
  const leaves = CT_DATA.map((d) => leafHash(d));
  assert.equal(hex(EMPTY_ROOT), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  for (let n = 1; n <= 8; n++) {
    const { src, frontier } = build(leaves.slice(0, n));
    assert.equal(hex(frontier.root()), CT_ROOTS[n - 1], `root of ${n}`);
    assert.equal(hex(await rangeHash(src, 0, n)), CT_ROOTS[n - 1]);
  }
  const { src } = build(leaves);
  for (const v of CT_INCLUSION) {
    assert.deepEqual((await inclusionPath(src, v.index, 0, v.size)).map(hex), v.path);
    assert.ok(verifyInclusion(leaves[v.index]!, v.index, v.size, v.path.map(unhex), unhex(CT_ROOTS[v.size - 1]!)));
  }
  for (const v of CT_CONSISTENCY) {
    assert.deepEqual((await consistencyPath(src, v.first, v.second)).map(hex), v.path);
    assert.ok(verifyConsistency(v.first, v.second, unhex(CT_ROOTS[v.first - 1]!), unhex(CT_ROOTS[v.second - 1]!), v.path.map(unhex)));
  }
});

test("every size up to 40 agrees with the RFC's recursive definitions; altered proofs fail", async () => {
  const all = Array.from({ length: 40 }, (_, i) => leafHash(`leaf ${i}`));
  const { src } = build(all);
  for (let n = 1; n <= all.length; n++) {
    const d = all.slice(0, n);
    const root = mth(d);
    const loaded = await Frontier.load(src, n);
    assert.equal(hex(loaded.root()), hex(root), `frontier root of ${n}`);
    assert.equal(hex(await rangeHash(src, 0, n)), hex(root));
    for (let m = 0; m < n; m++) {
      const p = await inclusionPath(src, m, 0, n);
      assert.deepEqual(p.map(hex), path(m, d).map(hex), `inclusion ${m}/${n}`);
      assert.ok(verifyInclusion(d[m]!, m, n, p, root));
      if (n > 1) assert.equal(verifyInclusion(d[m]!, m, n, p, mth(d.slice(0, n - 1))), false);
      if (p.length > 0) {
        const bad = p.map((x) => Buffer.from(x));
        bad[0]![0]! ^= 1;
        assert.equal(verifyInclusion(d[m]!, m, n, bad, root), false);
        assert.equal(verifyInclusion(d[m]!, m, n, p.slice(1), root), false);
      }
      assert.equal(verifyInclusion(d[m]!, m, n, [...p, root], root), false);
    }
    for (let m = 1; m < n; m++) {
      const p = await consistencyPath(src, m, n);
      assert.deepEqual(p.map(hex), subproof(m, d, true).map(hex), `consistency ${m}→${n}`);
      assert.ok(verifyConsistency(m, n, mth(d.slice(0, m)), root, p));
      // A rewritten old tree (one leaf changed) is not extended by the new one.
      const rewritten = [...d.slice(0, m - 1), leafHash("forged")];
      assert.equal(verifyConsistency(m, n, mth(rewritten), root, p), false, `forged ${m}→${n}`);
      assert.equal(verifyConsistency(m, n, mth(d.slice(0, m)), root, p.slice(0, -1)), false);
    }
  }
});

test("proofs read O(log n) stored nodes; append stores at most log2(n)+1", async () => {
  const n = 5000;
  const leaves = Array.from({ length: n }, (_, i) => leafHash(`x${i}`));
  const frontier = new Frontier();
  const nodes = new Map<string, Buffer>();
  let maxMade = 0;
  for (const l of leaves) {
    const made = frontier.push(l);
    maxMade = Math.max(maxMade, made.length);
    for (const m of made) nodes.set(`${m.level}/${m.index}`, m.hash);
  }
  assert.ok(maxMade <= Math.floor(Math.log2(n)) + 1);
  let reads = 0;
  const src: NodeSource = { node: async (l, i) => (reads++, nodes.get(`${l}/${i}`)!) };
  const bound = 2 * Math.ceil(Math.log2(n)) + 2;
  for (const m of [0, 1, 2047, 4095, 4999]) {
    reads = 0;
    await inclusionPath(src, m, 0, n);
    assert.ok(reads <= bound, `inclusion ${m}: ${reads} reads > ${bound}`);
  }
  for (const m of [1, 1000, 4096, 4999]) {
    reads = 0;
    await consistencyPath(src, m, n);
    assert.ok(reads <= bound, `consistency ${m}: ${reads} reads > ${bound}`);
  }
});
