/**
 * Overwrite-then-unlink for files that held a VM's data, and only for files vigil made. One pass of zeros over
 * the file's length, fsync, then unlink (NIST SP 800-88 "clear" for files on magnetic media). On SSDs and
 * copy-on-write filesystems the old blocks may survive remapping: the data registry records what was done so
 * nobody over-trusts it.
 *
 * A path is only a name: what is erased is decided by the file it names *now*. So the file is opened with
 * O_NOFOLLOW (a symbolic link put in its place is not followed), must be a regular file with one link, must lie
 * below the directory the caller owns (its parent resolved with realpath, so a linked directory cannot lead out),
 * and, when vigil recorded which file it made (device and inode at registration), must still be that file.
 * Anything else is refused and said why; nothing is written to a refused file.
 */
import { closeSync, constants, fchmodSync, fstatSync, fsyncSync, lstatSync, openSync, readdirSync, realpathSync, rmSync, unlinkSync, writeSync } from "node:fs";
import { basename, dirname, isAbsolute, join, normalize } from "node:path";

const CHUNK = 1024 * 1024;

/** Which file a path named when vigil made it: device and inode (decimal strings, exact for 64-bit values). */
export interface FileIdentity {
  dev: string;
  ino: string;
}

/** The identity and size of the file at `path` itself (a symbolic link is not followed), or undefined. */
export function identityOf(path: string): (FileIdentity & { size: number; regular: boolean }) | undefined {
  try {
    const st = lstatSync(path, { bigint: true });
    return { dev: st.dev.toString(), ino: st.ino.toString(), size: Number(st.size), regular: st.isFile() };
  } catch {
    return undefined;
  }
}

export type EraseResult = { erased: true; bytes: number } | { erased: false; missing: boolean; why: string };

function refuse(why: string, missing = false): EraseResult {
  return { erased: false, missing, why };
}

function isBelow(dir: string, path: string): boolean {
  return path === dir || path.startsWith(dir.endsWith("/") ? dir : dir + "/");
}

const WRITE_FLAGS = constants.O_RDWR | constants.O_NOFOLLOW | constants.O_NONBLOCK | constants.O_NOCTTY;

/**
 * Opens for writing without following a link. A read-only file vigil made (a template's disk, a frozen snapshot
 * base: 0400) is made writable first — through a descriptor of the file itself, never by name — when vigil's user
 * owns it; the caller then checks that the descriptor opened for writing is that same file.
 */
function openForErase(path: string): number {
  try {
    return openSync(path, WRITE_FLAGS);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "EACCES" || typeof process.getuid !== "function") throw err;
    const ro = openSync(path, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK | constants.O_NOCTTY);
    try {
      const st = fstatSync(ro);
      if (!st.isFile() || st.uid !== process.getuid()) throw err;
      fchmodSync(ro, 0o600);
    } finally {
      closeSync(ro);
    }
    return openSync(path, WRITE_FLAGS);
  }
}

/**
 * Overwrites and unlinks `path` if it is a regular file below `root` (and, given `expected`, still the file
 * vigil registered). Never throws for a refused or missing file: the result says what happened.
 */
export function eraseOwnedFile(root: string, path: string, expected?: FileIdentity): EraseResult {
  if (!isAbsolute(path) || normalize(path) !== path || path.split("/").includes("..")) return refuse("not a plain absolute path");
  let realRoot: string;
  let parent: string;
  try {
    if (lstatSync(root).isSymbolicLink()) return refuse(`vigil's directory ${root} is a symbolic link`);
    realRoot = realpathSync(root);
    parent = realpathSync(dirname(path));
  } catch {
    return refuse("its directory does not exist", true);
  }
  if (!isBelow(realRoot, parent)) return refuse(`outside vigil's directory ${root}`);
  const real = join(parent, basename(path));
  let fd: number;
  try {
    fd = openForErase(real);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === "ENOENT") return refuse("no longer there", true);
    if (code === "ELOOP") return refuse("a symbolic link (not followed)");
    return refuse(`cannot be opened (${code ?? "error"})`);
  }
  let bytes = 0;
  try {
    const st = fstatSync(fd, { bigint: true });
    if (!st.isFile()) return refuse("not a regular file");
    if (st.nlink !== 1n) return refuse(`has ${st.nlink} hard links (erasing it would destroy another name's data)`);
    if (expected && (st.dev.toString() !== expected.dev || st.ino.toString() !== expected.ino)) {
      return refuse("not the file vigil registered (device or inode changed)");
    }
    const size = Number(st.size);
    const zeros = Buffer.alloc(Math.min(CHUNK, Math.max(size, 1)));
    while (bytes < size) {
      const n = Math.min(zeros.length, size - bytes);
      writeSync(fd, zeros, 0, n, bytes);
      bytes += n;
    }
    fsyncSync(fd);
    // The name still has to be this file when it is unlinked (nobody swapped it while it was written).
    const now = lstatSync(real, { bigint: true });
    if (now.dev !== st.dev || now.ino !== st.ino) return refuse("replaced while it was being erased (overwritten copy kept, name left alone)");
  } finally {
    closeSync(fd);
  }
  unlinkSync(real);
  return { erased: true, bytes };
}

/**
 * Erases a directory vigil made below `root` (a half-made VM, a staging directory): every regular file in it is
 * overwritten and unlinked as above, then the tree is removed (links and sockets by name only, never followed).
 * Returns what was erased and what was refused.
 */
export function eraseTree(root: string, dir: string): { files: number; bytes: number; refused: Array<{ path: string; why: string }> } {
  const out = { files: 0, bytes: 0, refused: [] as Array<{ path: string; why: string }> };
  const parent = dirname(dir);
  if (!isAbsolute(dir) || normalize(dir) !== dir || dir.split("/").includes("..")) {
    out.refused.push({ path: dir, why: "not a plain absolute path" });
    return out;
  }
  let top;
  try {
    top = lstatSync(dir);
  } catch {
    return out; // nothing there
  }
  let realParent: string;
  try {
    realParent = realpathSync(parent);
    if (!isBelow(realpathSync(root), realParent) || lstatSync(root).isSymbolicLink()) throw new Error("outside");
  } catch {
    out.refused.push({ path: dir, why: `outside vigil's directory ${root}` });
    return out;
  }
  if (top.isDirectory()) {
    for (const entry of readdirSync(dir, { withFileTypes: true, recursive: true })) {
      if (!entry.isFile()) continue;
      const path = join(entry.parentPath, entry.name);
      const r = eraseOwnedFile(dir, path);
      if (r.erased) {
        out.files++;
        out.bytes += r.bytes;
      } else if (!r.missing) out.refused.push({ path, why: r.why });
    }
  }
  rmSync(join(realParent, basename(dir)), { recursive: true, force: true });
  return out;
}
