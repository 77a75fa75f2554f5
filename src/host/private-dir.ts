/**
 * Private directories (0700) for everything that holds a VM's data or a control socket. The mode is enforced
 * even when the directory already exists, so a loosened permission is repaired at the next use.
 */
import { chmodSync, closeSync, mkdirSync, openSync, statSync } from "node:fs";
import { VigilError, q } from "../errors.ts";

export function ensurePrivateDir(path: string): void {
  mkdirSync(path, { recursive: true, mode: 0o700 });
  chmodSync(path, 0o700);
  const st = statSync(path);
  if (typeof process.getuid === "function" && st.uid !== process.getuid()) {
    throw new VigilError("VIGIL_HOST", `Cannot use ${q(path)}: it is owned by uid ${st.uid}, not by vigil's user`);
  }
}

/**
 * Creates `path` empty if it does not exist and makes it 0600, for a file another program (QEMU) will then open
 * and fill with guest data: QEMU creates its files 0644, but it keeps the mode of one that exists.
 */
export function ensurePrivateFile(path: string): void {
  closeSync(openSync(path, "a", 0o600));
  chmodSync(path, 0o600);
}

/**
 * Takes every permission of group and others off an existing file, keeping the owner's (a read-only base stays
 * read-only). Repairs guest-data files made before vigil created them 0600.
 */
export function restrictToOwner(path: string): void {
  const mode = statSync(path).mode & 0o777;
  if ((mode & 0o077) !== 0) chmodSync(path, mode & 0o700);
}

/** Unix socket paths are limited to 107 bytes; fail clearly instead of QEMU's cryptic error. */
export function checkSocketPath(path: string): void {
  if (Buffer.byteLength(path) > 107) {
    throw new VigilError("VIGIL_HOST", `Cannot place a socket at ${q(path)}: longer than 107 bytes (use a shorter VIGIL_HOME)`);
  }
}
