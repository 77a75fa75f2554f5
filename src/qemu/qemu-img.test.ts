import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createBlank, createOverlay } from "./qemu-img.ts";

test("disks vigil creates are 0600: blank disks and overlays hold guest data", async (t) => {
  const dir = mkdtempSync(join(tmpdir(), "vigil-qemu-img-"));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const base = join(dir, "base.qcow2");
  const overlay = join(dir, "overlay.qcow2");
  await createBlank(base, 1);
  await createOverlay(overlay, base);
  for (const f of [base, overlay]) assert.equal(statSync(f).mode & 0o777, 0o600, f);
});
