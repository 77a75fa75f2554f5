import { test } from "node:test";
import assert from "node:assert/strict";
import { chmodSync, chownSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { VigilError } from "../errors.ts";
import { validateSharedStorage } from "./shared-storage.ts";

test("shared storage must be an existing root-owned directory, 0700 or 0711", (t) => {
  const base = mkdtempSync(join(tmpdir(), "vigil-shared-"));
  t.after(() => rmSync(base, { recursive: true, force: true }));
  const uid = process.getuid!();
  const bad = (dir: unknown, words: RegExp) =>
    assert.throws(() => validateSharedStorage(dir, uid), (e: unknown) => e instanceof VigilError && e.code === "VIGIL_BAD_REQUEST" && e.field === "shared-storage" && words.test(e.message));
  const ok = join(base, "ok");
  mkdirSync(ok, { mode: 0o700 });
  chmodSync(ok, 0o700);
  assert.equal(validateSharedStorage(ok, uid), ok);
  chmodSync(ok, 0o711);
  assert.equal(validateSharedStorage(ok, uid), ok);
  for (const mode of [0o755, 0o770, 0o701, 0o1700]) {
    chmodSync(ok, mode);
    bad(ok, /mode 0700 or 0711/);
  }
  chmodSync(ok, 0o700);
  bad(join(base, "missing"), /does not exist/);
  bad("relative/dir", /absolute/);
  bad(`${ok}/../ok`, /absolute/);
  bad(42, /absolute/);
  writeFileSync(join(base, "file"), "");
  bad(join(base, "file"), /not a directory/);
  symlinkSync(ok, join(base, "link"));
  bad(join(base, "link"), /symbolic link/);
  // Another owner is refused.
  assert.throws(() => validateSharedStorage(ok, uid + 1), (e: unknown) => e instanceof VigilError && /owned by uid/.test(e.message));
  if (uid === 0) {
    chownSync(ok, 1234, 1234);
    bad(ok, /must be owned by uid 0/);
  }
});
