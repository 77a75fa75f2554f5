import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { spawnSync } from "node:child_process";
import { backingChain, MAX_CHAIN } from "./jail-launch.ts";

function img(...args: string[]) {
  const r = spawnSync("qemu-img", ["create", "-q", "-f", "qcow2", ...args], { encoding: "utf8" });
  assert.equal(r.status, 0, r.stderr);
}

test("backing chains: read from the read-only layers, nearest first, bounded", async (t) => {
  const dir = mkdtempSync(join(tmpdir(), "vigil-chain-"));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  writeFileSync(join(dir, "base.raw"), Buffer.alloc(1 << 20));
  img("-F", "raw", "-b", join(dir, "base.raw"), join(dir, "mid.qcow2"));
  img("-F", "qcow2", "-b", join(dir, "mid.qcow2"), join(dir, "tpl.qcow2"));
  assert.deepEqual(await backingChain(join(dir, "tpl.qcow2")), [
    { file: join(dir, "tpl.qcow2"), format: "qcow2" },
    { file: join(dir, "mid.qcow2"), format: "qcow2" },
    { file: join(dir, "base.raw"), format: "raw" },
  ]);

  // too deep
  img(join(dir, "l0.qcow2"), "16M");
  for (let i = 1; i <= MAX_CHAIN; i++) img("-F", "qcow2", "-b", join(dir, `l${i - 1}.qcow2`), join(dir, `l${i}.qcow2`));
  await assert.rejects(backingChain(join(dir, `l${MAX_CHAIN}.qcow2`)), /deeper than 16 layers/);
  // a relative path is refused, not resolved against the daemon's cwd
  await assert.rejects(backingChain("disk.qcow2"), /not a regular file with an absolute path/);
});
