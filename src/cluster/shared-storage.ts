/**
 * Shared storage (docs/cluster.md "Shared storage and HA restarts"): `vigil agent --shared-storage DIR` names a
 * directory mounted at the same path on every host (NFS or a cluster file system in production, one directory in
 * tests). A VM created with `storage: "shared"` keeps its disks in DIR/<uuid>/disks, so another host can start it
 * (live migration without a disk mirror; HA restarts). QEMU's image locking stays on: it is what stops two QEMUs
 * from writing one disk.
 */
import { lstatSync } from "node:fs";
import { isAbsolute, join, normalize } from "node:path";
import { VigilError, q } from "../errors.ts";

/** Checks `dir` is usable as shared storage (an absolute, existing, root-owned directory, 0700 or 0711); returns it. */
export function validateSharedStorage(dir: unknown, expectUid = 0): string {
  const field = "shared-storage";
  if (typeof dir !== "string" || dir === "" || !isAbsolute(dir) || normalize(dir) !== dir || dir.length > 200) {
    throw new VigilError("VIGIL_BAD_REQUEST", `--shared-storage must be a plain absolute directory path of at most 200 characters, not ${q(dir)}`, { field });
  }
  let st;
  try {
    st = lstatSync(dir);
  } catch {
    throw new VigilError("VIGIL_BAD_REQUEST", `--shared-storage ${q(dir)} does not exist: mount the shared file system there first (the same path on every host)`, { field });
  }
  if (st.isSymbolicLink()) throw new VigilError("VIGIL_BAD_REQUEST", `--shared-storage ${q(dir)} is a symbolic link: give the mount point itself`, { field });
  if (!st.isDirectory()) throw new VigilError("VIGIL_BAD_REQUEST", `--shared-storage ${q(dir)} is not a directory`, { field });
  if (st.uid !== expectUid) throw new VigilError("VIGIL_BAD_REQUEST", `--shared-storage ${q(dir)} must be owned by uid ${expectUid} (root), not uid ${st.uid}`, { field });
  const mode = st.mode & 0o7777;
  if (mode !== 0o700 && mode !== 0o711) {
    throw new VigilError("VIGIL_BAD_REQUEST", `--shared-storage ${q(dir)} must have mode 0700 or 0711 (no one else may list or write it), not 0${mode.toString(8)}`, { field });
  }
  return dir;
}

/** A shared VM's directory on the shared storage: DIR/<uuid>. */
export function sharedVmDir(sharedStorage: string, uuid: string): string {
  return join(sharedStorage, uuid);
}
