/**
 * How `VmService` starts one VM's QEMU in its jail (docs/jail.md): the VM's uid, its disks' read-only backing
 * chains (as vigil created them, opened by the helper and passed as descriptors), the files QEMU may write
 * (handed to the VM's uid, 0600/0700), and the helper's command line. What is confined is also returned as the
 * `confinement` the API shows.
 */
import { chownSync, existsSync, lchownSync, mkdirSync, chmodSync, statSync } from "node:fs";
import { isAbsolute, join } from "node:path";
import { VigilError, q } from "../errors.ts";
import type { Db } from "../inventory/db.ts";
import type { VmLayout } from "../paths.ts";
import { imageInfo } from "../qemu/qemu-img.ts";
import type { LaunchPlan } from "../qemu/argv.ts";
import { SANDBOX } from "../qemu/argv.ts";
import { QEMU_BINARY, resolveBinary } from "../host/qemu-process.ts";
import { JAIL_HELPER, buildJailArgv, cgroupDir, hostCgroupSpecs, jailDevices, jailPidsMax, type JailPlan } from "../host/jail.ts";
import { jailUidOf } from "./jail-uids.ts";
import { diskFile } from "./vm-view.ts";
import type { VmRecord } from "./vm-repository.ts";

/** Longest backing chain vigil follows (its own templates and clones are a few layers deep). */
export const MAX_CHAIN = 16;
const FIRST_FD = 3;

/** The daemon's own pid file for a jailed QEMU (root-owned, in the VM's directory, which QEMU never sees). */
export const jailPidFile = (l: VmLayout) => join(l.dir, "jail.pid");
/** The empty directory the helper mounts the jail's root on. */
const jailRootDir = (l: VmLayout) => join(l.dir, "jail-root");

/** The absolute path of the QEMU binary (the jail has no PATH). */
function qemuBinaryPath(): string {
  const p = resolveBinary(QEMU_BINARY);
  if (isAbsolute(p) && existsSync(p)) return p;
  throw new VigilError("VIGIL_HOST", `Cannot find QEMU (${q(QEMU_BINARY)}) on PATH`);
}

/**
 * The read-only layers below `backing` (nearest first), read from those layers' own headers — never from the
 * VM's writable top image. Bounded, and each layer must be a regular qcow2 or raw file.
 */
export async function backingChain(backing: string): Promise<Array<{ file: string; format: string }>> {
  const chain: Array<{ file: string; format: string }> = [];
  let file: string | undefined = backing;
  while (file !== undefined) {
    if (chain.length >= MAX_CHAIN) throw new VigilError("VIGIL_HOST", `Cannot start: the backing chain of ${q(backing)} is deeper than ${MAX_CHAIN} layers`);
    if (!isAbsolute(file) || !statSync(file, { throwIfNoEntry: false })?.isFile()) throw new VigilError("VIGIL_HOST", `Cannot start: backing layer ${q(file)} is not a regular file with an absolute path`);
    if (chain.some((c) => c.file === file)) throw new VigilError("VIGIL_HOST", `Cannot start: the backing chain of ${q(backing)} loops at ${q(file)}`);
    const info = await imageInfo(file);
    if (info.format !== "qcow2" && info.format !== "raw") throw new VigilError("VIGIL_HOST", `Cannot start: backing layer ${q(file)} has format ${q(info.format)} (only qcow2 and raw)`);
    chain.push({ file, format: info.format });
    file = info["full-backing-filename"] ?? info["backing-filename"];
  }
  return chain;
}

export interface JailLaunch {
  binary: string;
  argv: string[];
  pidFile: string;
  cgroups: string[];
  /** Backing chains with their descriptors, for `LaunchPlan.backing`. */
  backing: NonNullable<LaunchPlan["backing"]>;
  confinement: Confinement;
}

export interface Confinement {
  jailed: true;
  uid: number;
  gid: number;
  namespaces: string[];
  cgroups: string[];
  pidsMax: number;
  seccomp: string;
  noNewPrivs: true;
  capabilities: "none";
  mounts: { readOnly: string[]; readWrite: string[]; devices: string[]; descriptors: string[] };
  limits: { nofile: number; nproc: number; fsizeBytes: number; core: 0 };
}

/** Plans the jail for `vm` (allocating its uid on first use); `buildQemuArgv` gets the backing chains. */
export async function planJail(db: Db, vm: VmRecord, l: VmLayout, accel: "kvm" | "tcg", buildQemuArgv: (backing: JailLaunch["backing"]) => string[]): Promise<JailLaunch> {
  const uid = await jailUidOf(db, vm.id);
  const backing: JailLaunch["backing"] = {};
  const fds: JailPlan["fds"] = [];
  let maxDiskBytes = 0;
  let largestFile = 0;
  for (const d of vm.spec.disks) {
    const chain = d.backing ? await backingChain(d.backing) : [];
    backing[d.name] = chain.map((c) => {
      const fd = FIRST_FD + fds.length;
      fds.push({ fd, path: c.file });
      return { ...c, fd };
    });
    const top = diskFile(l.disksDir, d.name);
    if (existsSync(top)) {
      maxDiskBytes = Math.max(maxDiskBytes, (await imageInfo(top, { format: "qcow2" }))["virtual-size"]);
      largestFile = Math.max(largestFile, statSync(top).size);
    }
  }
  const qemuBinary = qemuBinaryPath();
  const netns = vm.spec.nics.every((n) => n.restrict);
  const readOnly: string[] = [];
  if (vm.spec.boot.kind === "kernel") readOnly.push(vm.spec.boot.kernel, vm.spec.boot.initrd);
  if (!qemuBinary.startsWith("/usr/")) readOnly.push(qemuBinary);
  if (!netns && existsSync("/etc/resolv.conf")) readOnly.push("/etc/resolv.conf");
  const readWrite = [l.runDir, l.consoleLog, ...vm.spec.disks.map((d) => diskFile(l.disksDir, d.name))];
  const pidsMax = jailPidsMax(vm.spec.vcpus);
  // In one run a QEMU may grow a file by a full rewrite of its largest disk plus eight internal snapshots' RAM
  // (snapshots store the vmstate in the top image), plus 1 GiB of qcow2 metadata: bounded, yet never in the way.
  const fsizeBytes = largestFile + maxDiskBytes + 8 * vm.spec.memoryMiB * 2 ** 20 + 2 ** 30;
  const cgroups = hostCgroupSpecs(vm.id);
  const devices = jailDevices(accel);
  const plan: JailPlan = {
    uid, gid: uid, pidFile: jailPidFile(l), rootDir: jailRootDir(l), cgroups, pidsMax, devices, readWrite, readOnly, fds, netns,
    nofile: 4096, nproc: pidsMax, fsizeBytes, chdir: l.runDir, qemuBinary, qemuArgv: buildQemuArgv(backing),
  };
  return {
    binary: JAIL_HELPER,
    argv: buildJailArgv(plan),
    pidFile: plan.pidFile,
    cgroups,
    backing,
    confinement: {
      jailed: true, uid, gid: uid,
      namespaces: ["mnt", "pid", "ipc", "uts", ...(netns ? ["net"] : [])],
      cgroups: cgroups.map(cgroupDir), pidsMax, seccomp: SANDBOX, noNewPrivs: true, capabilities: "none",
      mounts: { readOnly: ["/usr (and the /bin, /lib* links)", "/etc/ld.so.cache", ...readOnly], readWrite, devices, descriptors: fds.map((f) => `${f.fd}: ${f.path}`) },
      limits: { nofile: plan.nofile, nproc: plan.nproc, fsizeBytes, core: 0 },
    },
  };
}

/** Before `ensurePrivateDir`: directories a previous jailed run handed to the VM's uid come back to root. */
export function reclaimJailDirs(l: VmLayout): void {
  if (existsSync(l.runDir)) lchownSync(l.runDir, 0, 0);
}

/** Hands QEMU exactly the files it writes: its run dir (0700), console log and top disks (0600). Guest RAM is a memfd. */
export function handOverFiles(vm: VmRecord, l: VmLayout, uid: number): void {
  mkdirSync(jailRootDir(l), { recursive: true, mode: 0o700 });
  chownSync(l.runDir, uid, uid);
  chmodSync(l.runDir, 0o700);
  for (const file of [l.consoleLog, ...vm.spec.disks.map((d) => diskFile(l.disksDir, d.name))]) {
    if (!existsSync(file)) continue;
    chownSync(file, uid, uid);
    chmodSync(file, 0o600);
  }
}
