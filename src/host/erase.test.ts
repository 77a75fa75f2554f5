import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { chmodSync, closeSync, existsSync, linkSync, mkdirSync, mkdtempSync, openSync, readFileSync, readSync, renameSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { eraseOwnedFile, identityOf } from "./erase.ts";

function dirs(t: { after(fn: () => unknown): void }) {
  const top = mkdtempSync(join(tmpdir(), "erase-"));
  t.after(() => rmSync(top, { recursive: true, force: true }));
  const root = join(top, "vms");
  const outside = join(top, "outside");
  mkdirSync(join(root, "vm1"), { recursive: true });
  mkdirSync(outside);
  const victim = join(outside, "victim");
  writeFileSync(victim, "precious");
  return { root, outside, victim };
}

test("overwrites every byte before unlinking", (t) => {
  const { root } = dirs(t);
  const path = join(root, "vm1", "disk");
  writeFileSync(path, Buffer.alloc(3 * 1024 * 1024 + 17, 0xab));
  // Keep a second descriptor open so the inode's content can still be read after unlink.
  const fd = openSync(path, "r");
  const r = eraseOwnedFile(root, path, identityOf(path));
  assert.deepEqual(r, { erased: true, bytes: 3 * 1024 * 1024 + 17 });
  assert.equal(existsSync(path), false);
  const buf = Buffer.alloc(3 * 1024 * 1024 + 17);
  readSync(fd, buf, 0, buf.length, 0);
  closeSync(fd);
  assert.equal(buf.indexOf(0xab), -1);
});

test("a symbolic link swapped in place of a registered file is not followed", (t) => {
  const { root, victim } = dirs(t);
  const path = join(root, "vm1", "disk");
  writeFileSync(path, "guest data");
  const id = identityOf(path);
  rmSync(path);
  symlinkSync(victim, path);
  const r = eraseOwnedFile(root, path, id);
  assert.equal(r.erased, false);
  assert.match(r.erased ? "" : r.why, /symbolic link/);
  assert.equal(readFileSync(victim, "utf8"), "precious");
  // Without a recorded identity too: the link is never followed.
  assert.equal(eraseOwnedFile(root, path).erased, false);
  assert.equal(readFileSync(victim, "utf8"), "precious");
});

test("files outside the owned directory, through a linked directory, or with '..' are refused", (t) => {
  const { root, outside, victim } = dirs(t);
  assert.match(JSON.stringify(eraseOwnedFile(root, victim, identityOf(victim))), /outside vigil's directory/);
  symlinkSync(outside, join(root, "vm1", "escape"));
  assert.match(JSON.stringify(eraseOwnedFile(root, join(root, "vm1", "escape", "victim"))), /outside vigil's directory/);
  assert.match(JSON.stringify(eraseOwnedFile(root, `${root}/vm1/../../outside/victim`)), /not a plain absolute path/);
  assert.match(JSON.stringify(eraseOwnedFile(root, "outside/victim")), /not a plain absolute path/);
  assert.equal(readFileSync(victim, "utf8"), "precious");
});

test("a file that is no longer the registered one, a hard link, a fifo or a directory is refused", (t) => {
  const { root, victim } = dirs(t);
  const path = join(root, "vm1", "disk");
  writeFileSync(path, "guest data");
  const id = identityOf(path);
  // Replaced by another file under the same name (the attacker's choice of content or a moved-in file).
  writeFileSync(join(root, "vm1", "other"), "someone else's");
  renameSync(join(root, "vm1", "other"), path);
  assert.match(JSON.stringify(eraseOwnedFile(root, path, id)), /device or inode changed/);
  assert.equal(readFileSync(path, "utf8"), "someone else's");

  const hard = join(root, "vm1", "hard");
  linkSync(victim, hard);
  assert.match(JSON.stringify(eraseOwnedFile(root, hard)), /2 hard links/);
  assert.equal(readFileSync(victim, "utf8"), "precious");

  const fifo = join(root, "vm1", "fifo");
  execFileSync("mkfifo", [fifo]);
  assert.match(JSON.stringify(eraseOwnedFile(root, fifo)), /not a regular file/);
  assert.match(JSON.stringify(eraseOwnedFile(root, join(root, "vm1"))), /cannot be opened|not a regular file/);
  assert.deepEqual(eraseOwnedFile(root, join(root, "vm1", "gone")), { erased: false, missing: true, why: "no longer there" });
});

test("a read-only file owned by vigil's user (a template's disk, 0400) is erased, also when vigil is not root", (t) => {
  const { root } = dirs(t);
  const path = join(root, "vm1", "base.qcow2");
  writeFileSync(path, Buffer.alloc(8192, 0xcd));
  chmodSync(path, 0o400);
  const script = `const { eraseOwnedFile } = await import(${JSON.stringify(join(import.meta.dirname, "erase.ts"))});
process.stdout.write(JSON.stringify(eraseOwnedFile(${JSON.stringify(root)}, ${JSON.stringify(path)})));`;
  const file = join(root, "..", "child.mjs");
  writeFileSync(file, script);
  // As root the permission bits are not checked: the child runs as an ordinary user who owns the files.
  const asUser = process.getuid?.() === 0 ? { uid: 65534, gid: 65534 } : {};
  if (asUser.uid !== undefined) execFileSync("chown", ["-R", "65534:65534", join(root, "..")]);
  chmodSync(join(root, ".."), 0o755);
  const out = execFileSync(process.execPath, ["--import", "tsx", file], { cwd: join(import.meta.dirname, "..", ".."), encoding: "utf8", ...asUser });
  assert.deepEqual(JSON.parse(out), { erased: true, bytes: 8192 });
  assert.equal(existsSync(path), false);
});
