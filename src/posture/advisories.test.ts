// Advisory sets: found in this machine's apt lists by their Release's suite, named by one sha256 that changes with
// any of their data, and the scan step over the real status.
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { VigilError } from "../errors.ts";
import { assessPackages, findSecurityIndexes, loadAdvisories } from "./advisories.ts";
import { parseDpkgStatus } from "./dpkg-status.ts";
import { pendingUpdates } from "./pending.ts";
import { APT_LISTS, securityPackagesFile } from "./testing/dpkg-oracle.ts";

const TRACKER = join(import.meta.dirname, "testdata", "security-tracker.json");
const dir = mkdtempSync(join(tmpdir(), "vigil-advisories-"));
after(() => rmSync(dir, { recursive: true, force: true }));

test("an apt lists directory yields its security suite's index only, and the tracker's release from its Release", async () => {
  assert.deepEqual(findSecurityIndexes(APT_LISTS), [securityPackagesFile()]);
  assert.deepEqual(findSecurityIndexes(APT_LISTS, ["arm64"]), []);
  const a = await loadAdvisories(APT_LISTS, { tracker: TRACKER });
  assert.equal(a.tracker?.release, "bookworm");
  assert.equal(a.indexes.length, 1);
  const again = await loadAdvisories(securityPackagesFile(), { tracker: TRACKER });
  assert.equal(again.sha256, a.sha256, "same data, same name");
  const noTracker = await loadAdvisories(APT_LISTS);
  assert.notEqual(noTracker.sha256, a.sha256);
  const other = join(dir, "tracker.json");
  writeFileSync(other, readFileSync(TRACKER, "utf8").replace("3.0.22-1~deb12u1", "3.0.22-1~deb12u2"));
  assert.notEqual((await loadAdvisories(APT_LISTS, { tracker: other })).sha256, a.sha256, "a changed tracker is a different set");
});

test("missing or empty sources are refused with the field", async () => {
  await assert.rejects(loadAdvisories(join(dir, "nope")), (e: unknown) => e instanceof VigilError && e.code === "VIGIL_NOT_FOUND" && e.field === "from");
  await assert.rejects(loadAdvisories(dir), (e: unknown) => e instanceof VigilError && /no security suite Packages index there/.test(e.message));
  await assert.rejects(loadAdvisories(APT_LISTS, { tracker: join(dir, "none.json") }), (e: unknown) => e instanceof VigilError && e.field === "tracker");
  const plain = join(dir, "Packages");
  writeFileSync(plain, "Package: a\nVersion: 1\nArchitecture: all\n");
  await assert.rejects(loadAdvisories(plain, { tracker: TRACKER }), /no release given/);
  assert.equal((await loadAdvisories(plain, { tracker: TRACKER, release: "bookworm" })).tracker?.release, "bookworm");
});

test("the scan step over the real status: the packages and the pending list in the posture record's shapes", async () => {
  const a = await loadAdvisories(APT_LISTS, { tracker: TRACKER });
  const status = readFileSync("/var/lib/dpkg/status");
  const r = assessPackages(status, a);
  const installed = parseDpkgStatus(status);
  assert.equal(r.packages.length, installed.length);
  assert.deepEqual(r.pending.map((p) => p.package), pendingUpdates(installed, a.index, a.tracker).map((p) => p.package));
  assert.equal(r.advisoriesSha256, a.sha256);
  const held = assessPackages(Buffer.from("Package: a\nStatus: install ok unpacked\nVersion: 1\nArchitecture: all\n"), a);
  assert.deepEqual(held.notes, ["a:all is unpacked (counted: its files are on disk)"]);
  assert.throws(() => assessPackages(Buffer.from("Package: a\n"), a), /the guest's \/var\/lib\/dpkg\/status, line 1/);
});
