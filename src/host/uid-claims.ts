/**
 * Machine-wide claims on the VM uid range (host/vm-uid-range.ts). Each daemon records its VMs' uids in its own
 * inventory, but the uids are the machine's: two daemons with different homes (the agents of a trial cluster on
 * one machine, a test's daemon next to the real one) would otherwise both start at the bottom of the range and give
 * two VMs one uid — and with it each other's disks, sockets and network policy. A claim is a file named for the
 * uid, created exclusively (O_EXCL: of two daemons racing for a uid exactly one wins), holding the VM's id; claims
 * are never released, as a uid is never given to a second VM. A `next` file is only a hint where to start looking,
 * so a lost or stale hint costs retries, never a shared uid.
 */
import { readFileSync, renameSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { VigilError, q } from "../errors.ts";
import { ensurePrivateDir } from "./private-dir.ts";
import { VM_UID_BASE, VM_UID_COUNT } from "./vm-uid-range.ts";

const END = VM_UID_BASE + VM_UID_COUNT;

function readHint(dir: string): number {
  try {
    const n = Number(readFileSync(join(dir, "next"), "utf8").trim());
    return Number.isInteger(n) && n >= VM_UID_BASE && n <= END ? n : VM_UID_BASE;
  } catch {
    return VM_UID_BASE;
  }
}

function writeHint(dir: string, next: number): void {
  // Written aside and renamed: a reader sees the old hint or the new one, never half of one.
  const tmp = join(dir, `next.${process.pid}`);
  writeFileSync(tmp, `${next}\n`, { mode: 0o600 });
  renameSync(tmp, join(dir, "next"));
}

/** Claims the first free uid at or above `from` for `vmId`; VIGIL_HOST when the range is used up. */
export function claimUid(dir: string, from: number, vmId: string): number {
  ensurePrivateDir(dir);
  // Bounded by the range: at most VM_UID_COUNT attempts, and the hint makes it one in the usual case.
  for (let uid = Math.max(from, readHint(dir)); uid < END; uid++) {
    try {
      writeFileSync(join(dir, String(uid)), `${vmId}\n`, { flag: "wx", mode: 0o600 });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "EEXIST") continue;
      throw err;
    }
    writeHint(dir, uid + 1);
    return uid;
  }
  throw new VigilError("VIGIL_HOST", `Cannot allocate a uid for the jail of VM ${vmId}: all ${VM_UID_COUNT} uids from ${VM_UID_BASE} have been used on this machine`);
}

/**
 * Makes sure `uid`, which this daemon's inventory gives `vmId`, is claimed for it on this machine (a uid recorded
 * before claims existed is claimed on its next use); VIGIL_HOST when another VM holds the claim.
 */
export function confirmUid(dir: string, uid: number, vmId: string): void {
  ensurePrivateDir(dir);
  const path = join(dir, String(uid));
  try {
    writeFileSync(path, `${vmId}\n`, { flag: "wx", mode: 0o600 });
    return;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
  }
  const holder = readFileSync(path, "utf8").trim();
  if (holder !== vmId) {
    throw new VigilError("VIGIL_HOST", `The jail uid ${uid} of VM ${vmId} is claimed on this machine by VM ${q(holder.slice(0, 64))} (another vigil home): refusing to share it; give this VM a new uid by recreating it`);
  }
}
