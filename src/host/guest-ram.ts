/**
 * Guest RAM from the host side. QEMU backs a VM's RAM with `memory-backend-memfd` (qemu/argv.ts): an anonymous,
 * sealed memfd that is never a file on any filesystem and goes away with the process. The only way in is QEMU's
 * own descriptor, `/proc/<pid>/fd/N`, whose link QEMU 7.2 names `/memfd:memory-backend-memfd (deleted)` (the
 * object's type name, measured on a booted VM). The pid comes from vigil (the runtime's pid), N from scanning
 * that process's descriptor table; no path here is chosen by the guest.
 */
import { closeSync, fstatSync, openSync, readdirSync, readlinkSync } from "node:fs";
import { VigilError } from "../errors.ts";

/** What `/proc/<pid>/fd/N` of QEMU's RAM backend reads (memfd_create name "memory-backend-memfd"). */
export const RAM_MEMFD_LINK = "/memfd:memory-backend-memfd (deleted)";
/** QEMU has a few dozen descriptors; a table larger than this is not scanned. */
const MAX_FDS_SCANNED = 65_536;

/**
 * Opens the guest RAM of the QEMU with host pid `pid` and returns the descriptor (`"r"`: O_RDONLY, what vigil
 * uses; `"r+"`: for test tools that play an attacker). Its size must be exactly `expectedBytes` (the spec's
 * memory): a memfd of another size is not this VM's RAM. Exactly one such memfd must exist.
 */
export function openGuestRam(pid: number, expectedBytes: number, mode: "r" | "r+" = "r"): number {
  if (!Number.isSafeInteger(pid) || pid <= 1) throw new VigilError("VIGIL_HOST", `Cannot open guest RAM: bad QEMU pid ${pid}`);
  const dir = `/proc/${pid}/fd`;
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch (err) {
    throw new VigilError("VIGIL_HOST", `Cannot open guest RAM: cannot list ${dir}: ${(err as Error).message}`, { cause: err });
  }
  if (names.length > MAX_FDS_SCANNED) throw new VigilError("VIGIL_HOST", `Cannot open guest RAM: ${dir} has ${names.length} entries (more than ${MAX_FDS_SCANNED})`);
  const candidates: string[] = [];
  for (const n of names) {
    if (!/^\d{1,10}$/.test(n)) continue;
    try {
      if (readlinkSync(`${dir}/${n}`) === RAM_MEMFD_LINK) candidates.push(n);
    } catch {
      /* closed meanwhile */
    }
  }
  const matches: number[] = [];
  try {
    for (const n of candidates) {
      let fd: number;
      try {
        fd = openSync(`${dir}/${n}`, mode);
      } catch {
        continue; // closed meanwhile
      }
      // Check what was opened, not what the name said a moment earlier: the descriptor number may have been reused.
      let ok = false;
      try {
        const st = fstatSync(fd);
        ok = st.isFile() && st.size === expectedBytes && readlinkSync(`/proc/self/fd/${fd}`) === RAM_MEMFD_LINK;
      } catch {
        ok = false;
      }
      if (ok) matches.push(fd);
      else closeSync(fd);
    }
  } catch (err) {
    for (const fd of matches) closeSync(fd);
    throw err;
  }
  if (matches.length === 1) return matches[0]!;
  for (const fd of matches) closeSync(fd);
  throw new VigilError(
    "VIGIL_HOST",
    matches.length === 0
      ? `Cannot open guest RAM: QEMU (pid ${pid}) has no ${RAM_MEMFD_LINK} of ${expectedBytes} bytes (${candidates.length} memfd(s) of that name)`
      : `Cannot open guest RAM: QEMU (pid ${pid}) has ${matches.length} memfds of ${expectedBytes} bytes; expected one`,
  );
}
