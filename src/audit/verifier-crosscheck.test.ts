/**
 * scripts/verify-audit-export.mjs re-implements the RFC 9162 verifiers of merkle.ts on purpose (a third party runs
 * it with node:crypto alone). This pins the two together: for consistency proofs of every shape (old size a power
 * of two, odd, one short, equal) the script and `verifyConsistency` give the same answer, valid and forged alike.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { openSqlite } from "../inventory/db.ts";
import { AuditLog } from "./audit-log.ts";
import { treeHeadBytes, type TreeHead } from "./chain.ts";
import { leafHash, verifyConsistency } from "./merkle.ts";
import { loadOrCreateSiteKey } from "./site-key.ts";

const VERIFIER = join(import.meta.dirname, "..", "..", "scripts", "verify-audit-export.mjs");

test("the standalone verifier and merkle.ts agree on consistency proofs, valid and forged", async (t) => {
  const dir = mkdtempSync(join(tmpdir(), "audit-crosscheck-"));
  const db = await openSqlite(join(dir, "vigil.db"));
  t.after(async () => {
    await db.destroy();
    rmSync(dir, { recursive: true, force: true });
  });
  const key = loadOrCreateSiteKey(join(dir, "keys"));
  const pub = join(dir, "keys", "site-ed25519.pub.pem");
  const log = await AuditLog.open(db, key, "h", join(dir, "keys", "head.json"));
  const n = 21;
  const heads: TreeHead[] = [log.currentHead()];
  for (let i = 0; i < n; i++) {
    await log.append({ actor: "a", action: "vm.start", target: { kind: "vm" }, result: "ok", details: { i } });
    heads.push(log.currentHead());
  }
  const sign = (h: Omit<TreeHead, "signature">): TreeHead => ({ ...h, signature: key.sign(treeHeadBytes(h)) });
  const unhex = (s: string) => Buffer.from(s, "hex");
  let checked = 0;
  const both = (fromHead: TreeHead, proof: { fromSize: number; toSize: number; path: string[]; head: TreeHead }, expected: boolean, what: string) => {
    const lib = verifyConsistency(fromHead.size, proof.toSize, unhex(fromHead.rootHash), unhex(proof.head.rootHash), proof.path.map(unhex));
    assert.equal(lib, expected, `merkle.ts, ${what}`);
    const file = join(dir, `proof-${checked++}.json`);
    writeFileSync(file, JSON.stringify({ ...proof, fromHead }));
    const r = spawnSync(process.execPath, [VERIFIER, "--proof", file, pub], { encoding: "utf8" });
    assert.equal(r.status, expected ? 0 : 1, `verify-audit-export.mjs, ${what}: ${r.stdout}${r.stderr}`);
    if (!expected) assert.match(r.stdout, /does NOT extend/, what);
  };
  for (const m of [0, 1, 4, 7, 8, 13, 20, 21]) {
    const p = await log.consistencyProof(m);
    both(heads[m]!, p, true, `${m}→${n}`);
    // From size 0 the script does not compare the old root with the empty root (merkle.ts does); vigil signs no
    // other root for size 0, so only the valid case is compared there.
    if (m === 0) continue;
    // An old head of the same size over a different history (signed with the key): not extended.
    both(sign({ ...heads[m]!, rootHash: leafHash(`forged ${m}`).toString("hex") }), p, false, `forged old root ${m}→${n}`);
    if (p.path.length > 0) {
      const path = [...p.path];
      path[path.length - 1] = leafHash("forged node").toString("hex");
      both(heads[m]!, { ...p, path }, false, `altered path ${m}→${n}`);
    }
  }
});
