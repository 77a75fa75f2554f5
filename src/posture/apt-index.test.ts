// apt Packages indexes: this machine's real security index (lz4, decompressed by apt-helper) and its InRelease;
// the newest version per (name, arch) checked against dpkg over real indexes holding several versions; bombs,
// corrupt and oversized files refused; a tampered index is not "listed" by its Release; fuzzed indexes refused
// with a VigilError.
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { gzipSync } from "node:zlib";
import fc from "fast-check";
import { VigilError } from "../errors.ts";
import { DEB822_LIMITS } from "./deb822.ts";
import { findRelease, loadPackagesIndex, parsePackagesIndex, releaseBody } from "./apt-index.ts";
import { APT_HELPER, aptListFiles, dpkgCompareMany, securityPackagesFile } from "./testing/dpkg-oracle.ts";

const SEED = Number(process.env.VIGIL_FUZZ_SEED ?? 13);
const dir = mkdtempSync(join(tmpdir(), "vigil-apt-index-"));
after(() => rmSync(dir, { recursive: true, force: true }));
const cat = (f: string) => execFileSync(APT_HELPER, ["cat-file", f], { maxBuffer: 256 << 20 });

test("the real security index loads with its descriptor: hashes, suite, dates, listed by its InRelease", async () => {
  const file = securityPackagesFile();
  const { index, descriptor: d } = await loadPackagesIndex(file);
  const text = cat(file);
  const names = new Set([...text.toString("latin1").matchAll(/^Package: (\S+)$/gm)].map((m) => m[1]));
  assert.equal(index.size, names.size);
  assert.ok(index.size > 1000);
  assert.equal(d.sha256, createHash("sha256").update(readFileSync(file)).digest("hex"));
  assert.equal(d.contentSha256, createHash("sha256").update(text).digest("hex"));
  assert.equal(d.contentBytes, text.length);
  assert.ok(d.release, "the InRelease beside it was found");
  assert.equal(d.release.indexPath, "main/binary-amd64/Packages");
  assert.equal(d.release.codename, "bookworm-security");
  assert.match(d.release.date ?? "", /\d{4} \d\d:\d\d:\d\d UTC$/);
  assert.match(d.release.validUntil ?? "", /UTC$/);
  assert.equal(d.release.listed, true, "the decompressed index is the one the InRelease lists");
  assert.equal(d.release.signature, "good", "gpgv accepts the InRelease with Debian's keyring");
  assert.equal(d.release.dateIso, new Date(Date.parse(d.release.date!)).toISOString());
  assert.ok(Date.parse(d.release.validUntilIso!) > Date.parse(d.release.dateIso!));
  const openssl = index.get("openssl")?.get("amd64");
  assert.ok(openssl && openssl.source === "openssl" && /deb12u/.test(openssl.version));
});

test("newest per (name, arch) equals dpkg's choice over real indexes with several versions of a package", () => {
  // the security and updates suites together list many packages twice, at different versions
  const texts = aptListFiles("_Packages.lz4").filter((f) => !f.includes("_bookworm_main_")).map((f) => cat(f).toString("latin1"));
  const all = texts.join("\n");
  const index = parsePackagesIndex(all, "merged");
  const versions = new Map<string, string[]>();
  for (const st of all.split(/\n\n+/)) {
    const p = /^Package: (.+)$/m.exec(st)?.[1];
    const v = /^Version: (.+)$/m.exec(st)?.[1];
    const a = /^Architecture: (.+)$/m.exec(st)?.[1];
    if (p && v && a) versions.set(`${p}\t${a}`, [...(versions.get(`${p}\t${a}`) ?? []), v]);
  }
  const pairs: Array<[string, string]> = [];
  const keys: string[] = [];
  for (const [k, vs] of versions) {
    if (vs.length < 2) continue;
    const [p, a] = k.split("\t");
    const chosen = index.get(p!)!.get(a!)!.version;
    for (const v of vs) {
      if (v === chosen) continue;
      pairs.push([chosen, v]);
      keys.push(k);
    }
  }
  assert.ok(pairs.length >= 20, `${pairs.length} pairs of versions of one package`);
  const verdicts = dpkgCompareMany(pairs);
  const wrong = pairs.map(([c, v], i) => (verdicts[i] === -1 ? `${keys[i]}: chose ${c} over ${v}` : "")).filter((w) => w !== "");
  assert.deepEqual(wrong, []);
});

test("decompression is bounded: a bomb, a corrupt file, an oversized file and a missing file are refused", async () => {
  const bomb = join(dir, "bomb_Packages.gz");
  writeFileSync(bomb, gzipSync(Buffer.alloc(20 << 20, "Package: a\nVersion: 1\nArchitecture: all\n\n")));
  await assert.rejects(loadPackagesIndex(bomb, { limits: { ...DEB822_LIMITS, maxBytes: 1 << 20 } }), (e: unknown) => e instanceof VigilError && /decompresses to more than 1048576 bytes/.test(e.message));
  const corrupt = join(dir, "corrupt_Packages.lz4");
  writeFileSync(corrupt, Buffer.from("this is not lz4 at all"));
  await assert.rejects(loadPackagesIndex(corrupt), (e: unknown) => e instanceof VigilError && /Cannot read the index .*corrupt_Packages.lz4.*apt-helper failed/.test(e.message));
  await assert.rejects(loadPackagesIndex(join(dir, "missing_Packages")), (e: unknown) => e instanceof VigilError && e.code === "VIGIL_NOT_FOUND");
  const big = join(dir, "big_Packages");
  writeFileSync(big, Buffer.alloc(65 << 20, 0x41));
  await assert.rejects(loadPackagesIndex(big), /more than the limit of 67108864/);
  const gz = join(dir, "ok_Packages.gz");
  writeFileSync(gz, gzipSync("Package: a\nVersion: 1.0-1\nArchitecture: all\n\nPackage: a\nVersion: 1.0-1+deb12u1\nArchitecture: all\n"));
  assert.equal((await loadPackagesIndex(gz)).index.get("a")?.get("all")?.version, "1.0-1+deb12u1");
});

test("an index whose bytes differ from what its Release lists is not listed", async () => {
  const file = securityPackagesFile();
  const rel = findRelease(file);
  assert.ok(rel);
  const tampered = join(dir, "tampered_Packages");
  writeFileSync(tampered, cat(file).toString("latin1").replace(/^Version: (.*)\+deb12u(\d+)$/m, "Version: $1+deb12u9$2"), "latin1");
  const { descriptor } = await loadPackagesIndex(tampered, { release: rel });
  assert.equal(descriptor.release?.listed, false);
  assert.equal(findRelease(join(dir, "no-dists-here_Packages")), undefined);
});

test("a tampered InRelease fails its signature; a plain Release is unsigned; a wrong keyring is bad", async () => {
  const file = securityPackagesFile();
  const rel = findRelease(file)!;
  const original = readFileSync(rel.path, "latin1");
  const site = join(dir, "site_dists_bookworm-security_main_binary-amd64_Packages.lz4");
  writeFileSync(site, readFileSync(file));
  const inrelease = join(dir, "site_dists_bookworm-security_InRelease");
  writeFileSync(inrelease, original.replace(/^Valid-Until: .*$/m, "Valid-Until: Sat, 12 Dec 2099 03:33:28 UTC"), "latin1");
  const tampered = (await loadPackagesIndex(site)).descriptor.release!;
  assert.equal(tampered.validUntil, "Sat, 12 Dec 2099 03:33:28 UTC");
  assert.equal(tampered.signature, "bad");
  assert.equal(tampered.listed, true, "the index itself is still the one listed: only the signature tells");
  writeFileSync(inrelease, original, "latin1");
  assert.equal((await loadPackagesIndex(site, { keyring: join(dir, "empty.gpg") })).descriptor.release!.signature, "not-checked");
  writeFileSync(join(dir, "empty.gpg"), "");
  assert.equal((await loadPackagesIndex(site, { keyring: join(dir, "empty.gpg") })).descriptor.release!.signature, "bad");
  rmSync(inrelease);
  writeFileSync(join(dir, "site_dists_bookworm-security_Release"), releaseBody(Buffer.from(original, "latin1"), "InRelease"), "latin1");
  const plain = (await loadPackagesIndex(site)).descriptor.release!;
  assert.equal(plain.signature, "unsigned");
  assert.equal(plain.listed, true);
});

test("clear-signed Release bodies: the armour is removed and dash-escaping undone; a truncated one is refused", () => {
  const signed = Buffer.from("-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\nSuite: x\n- -Odd: y\n-----BEGIN PGP SIGNATURE-----\nabc\n-----END PGP SIGNATURE-----\n");
  assert.equal(releaseBody(signed, "InRelease"), "Suite: x\n-Odd: y");
  assert.throws(() => releaseBody(Buffer.from("-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\nSuite: x\n"), "InRelease"), /without its body or signature/);
  assert.throws(() => releaseBody(Buffer.concat([signed, Buffer.from("Suite: evil\n")]), "InRelease"), /text after the signature/);
  const nested = Buffer.from("-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\nSuite: x\n-----BEGIN PGP SIGNED MESSAGE-----\n-----BEGIN PGP SIGNATURE-----\nabc\n-----END PGP SIGNATURE-----\n");
  assert.throws(() => releaseBody(nested, "InRelease"), /second armoured block/);
});

test("malformed stanzas refuse the index with the line", () => {
  assert.throws(() => parsePackagesIndex("Package: a\nVersion: 1\n", "P"), /P, line 1: a stanza needs Package, Version and Architecture/);
  assert.throws(() => parsePackagesIndex("Package: a\nVersion: x\nArchitecture: all\n", "P"), /P, line 2: Version/);
  assert.throws(() => parsePackagesIndex("Package: a\nVersion: 1\nArchitecture: all\nSource: b (?)\n", "P"), /P, line 4: Source/);
});

test("fuzz: mutated real index stanzas parse or are refused with a VigilError", () => {
  const lines = cat(securityPackagesFile()).toString("latin1").split("\n").slice(0, 4000);
  const junk = fc.constantFrom("Version: 1:", "Version: 9:9", "Package: x_y", "Architecture: ALL", "", " cont", "Source: s (1.0)", "Source: s (", "Package: dup");
  fc.assert(
    fc.property(fc.array(fc.tuple(fc.nat(lines.length - 1), junk), { minLength: 1, maxLength: 8 }), (muts) => {
      const l = [...lines];
      for (const [at, s] of muts) l[at] = s;
      try {
        for (const [, byArch] of parsePackagesIndex(l.join("\n"))) assert.ok(byArch.size > 0);
      } catch (e) {
        assert.ok(e instanceof VigilError, String(e));
      }
    }),
    { seed: SEED, numRuns: 100 },
  );
});
