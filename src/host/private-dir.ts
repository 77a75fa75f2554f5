/**
 * Private directories (0700) for everything that holds a VM's data or a control socket. The mode is enforced
 * even when the directory already exists, so a loosened permission is repaired at the next use.
 */
import { chmodSync, mkdirSync, statSync } from "node:fs";
import { VigilError, q } from "../errors.ts";

export function ensurePrivateDir(path: string): void {
  mkdirSync(path, { recursive: true, mode: 0o700 });
  chmodSync(path, 0o700);
  const st = statSync(path);
  if (typeof process.getuid === "function" && st.uid !== process.getuid()) {
    throw new VigilError("VIGIL_HOST", `Cannot use ${q(path)}: it is owned by uid ${st.uid}, not by vigil's user`);
  }
}

/** Unix socket paths are limited to 107 bytes; fail clearly instead of QEMU's cryptic error. */
export function checkSocketPath(path: string): void {
  if (Buffer.byteLength(path) > 107) {
    throw new VigilError("VIGIL_HOST", `Cannot place a socket at ${q(path)}: longer than 107 bytes (use a shorter VIGIL_HOME)`);
  }
}
