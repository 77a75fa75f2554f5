import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ensurePrivateFile, restrictToOwner } from "./private-dir.ts";

test("ensurePrivateFile creates a missing file 0600 and tightens an existing one, keeping its content", (t) => {
  const dir = mkdtempSync(join(tmpdir(), "vigil-private-"));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const fresh = join(dir, "ram");
  ensurePrivateFile(fresh);
  assert.equal(statSync(fresh).mode & 0o777, 0o600);
  assert.equal(statSync(fresh).size, 0);
  const old = join(dir, "console.log");
  writeFileSync(old, "boot\n", { mode: 0o644 });
  ensurePrivateFile(old);
  assert.equal(statSync(old).mode & 0o777, 0o600);
  assert.equal(readFileSync(old, "utf8"), "boot\n");
});

test("restrictToOwner takes group and other bits off and keeps the owner's, so a read-only base stays read-only", (t) => {
  const dir = mkdtempSync(join(tmpdir(), "vigil-private-"));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  for (const [before, after] of [[0o644, 0o600], [0o444, 0o400], [0o600, 0o600], [0o400, 0o400]] as const) {
    const f = join(dir, `f${before.toString(8)}`);
    writeFileSync(f, "x", { mode: before });
    restrictToOwner(f);
    assert.equal(statSync(f).mode & 0o777, after, before.toString(8));
  }
});
