/**
 * How `VmService` starts one VM's QEMU in its jail (docs/jail.md): the VM's uid, its disks' read-only backing
 * chains (as vigil created them, opened by the helper and passed as descriptors), the files QEMU may write
 * (handed to the VM's uid, 0600/0700), and the helper's command line. What is confined is also returned as the
 * `confinement` the API shows.
 */
import { MAX_CHAIN, type RecordedPlaces } from "./recorded-layers.ts";
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
 * The read-only layers from `backing` down (nearest first). `backing` itself is vigil's record; every layer below
 * it is named by a header that a QEMU once wrote (a template's disk was a running VM's), so it is followed only
 * under the same rule as export (`recorded-layers.ts`): a place vigil recorded for this VM, named with backing
 * format qcow2 (never probed), no `json:` name, no external data file. Bounded, no loops.
 */
export async function backingChain(backing: string, places: RecordedPlaces): Promise<Array<{ file: string; format: string }>> {
  const refuse = (why: string) => new VigilError("VIGIL_HOST", `Cannot start: ${why}; vigil did not put it there, so a disk header was changed (by a QEMU?)`);
  const chain: Array<{ file: string; format: string }> = [];
  let file: string | undefined = backing;
  let format: string | undefined;
  while (file !== undefined) {
    if (chain.length >= MAX_CHAIN) throw new VigilError("VIGIL_HOST", `Cannot start: the backing chain of ${q(backing)} is deeper than ${MAX_CHAIN} layers`);
    if (!isAbsolute(file) || !statSync(file, { throwIfNoEntry: false })?.isFile()) throw new VigilError("VIGIL_HOST", `Cannot start: backing layer ${q(file)} is not a regular file with an absolute path`);
    if (chain.some((c) => c.file === file)) throw new VigilError("VIGIL_HOST", `Cannot start: the backing chain of ${q(backing)} loops at ${q(file)}`);
    const info = await imageInfo(file, format ? { format } : {});
    if (info.format !== "qcow2" && info.format !== "raw") throw new VigilError("VIGIL_HOST", `Cannot start: backing layer ${q(file)} has format ${q(info.format)} (only qcow2 and raw)`);
    const dataFile = (info["format-specific"] as { data?: { "data-file"?: unknown } } | undefined)?.data?.["data-file"];
    if (dataFile !== undefined) throw refuse(`backing layer ${q(file)} keeps its data in an external file`);
    chain.push({ file, format: info.format });
    const name = info["backing-filename"];
    if (name === undefined) break;
    if (name.startsWith("json:")) throw refuse(`backing layer ${q(file)} names a json: block graph as its backing file`);
    if (info["backing-filename-format"] !== "qcow2") throw refuse(`backing layer ${q(file)} names its backing file with format ${q(info["backing-filename-format"] ?? "(not recorded)")}, not qcow2`);
    file = info["full-backing-filename"] ?? name;
    if (!places.has(file)) throw refuse(`backing layer ${q(chain.at(-1)!.file)} names ${q(name)}, which is not one of this VM's recorded disks, its templates' or its image`);
    format = "qcow2";
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

/** A bridged NIC's tap, as the switch attached it: the helper opens `tap` inside the namespace at `netnsPath`. */
export interface JailTap {
  nic: string;
  netnsPath: string;
  tap: string;
}

/**
 * Plans the jail for `vm` (allocating its uid on first use); `buildQemuArgv` gets the backing chains and the tap
 * descriptor of each bridged NIC in `taps` (numbered after the backing layers').
 */
export async function planJail(
  db: Db,
  vm: VmRecord,
  l: VmLayout,
  accel: "kvm" | "tcg",
  places: RecordedPlaces,
  taps: readonly JailTap[],
  buildQemuArgv: (backing: JailLaunch["backing"], tapFds: Record<string, number>) => string[],
  /** A replica of the VM (src/recording/replica.ts) runs as the VM's uid in cgroups of its own. */
  options: { cgroupId?: string } = {},
): Promise<JailLaunch> {
  const uid = await jailUidOf(db, vm.id);
  const backing: JailLaunch["backing"] = {};
  const fds: JailPlan["fds"] = [];
  let maxDiskBytes = 0;
  let largestFile = 0;
  for (const d of vm.spec.disks) {
    const chain = d.backing ? await backingChain(d.backing, places) : [];
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
  const jailTaps: JailPlan["taps"] = taps.map((t, i) => ({ fd: FIRST_FD + fds.length + i, netnsPath: t.netnsPath, ifname: t.tap }));
  const tapFds = Object.fromEntries(taps.map((t, i) => [t.nic, jailTaps[i]!.fd]));
  const qemuBinary = qemuBinaryPath();
  // Its own network namespace unless a NIC is open user-mode (slirp needs host sockets): a bridged NIC's tap is
  // a descriptor opened before the unshare, so QEMU needs no interface at all.
  const netns = vm.spec.nics.every((n) => n.mode === "bridge" || n.restrict);
  const readOnly: string[] = [];
  if (vm.spec.boot.kind === "kernel") readOnly.push(vm.spec.boot.kernel, vm.spec.boot.initrd);
  if (!qemuBinary.startsWith("/usr/")) readOnly.push(qemuBinary);
  if (!netns && existsSync("/etc/resolv.conf")) readOnly.push("/etc/resolv.conf");
  const readWrite = [l.runDir, l.consoleLog, ...vm.spec.disks.map((d) => diskFile(l.disksDir, d.name))];
  const pidsMax = jailPidsMax(vm.spec.vcpus);
  // In one run a QEMU may grow a file by a full rewrite of its largest disk plus eight internal snapshots' RAM
  // (snapshots store the vmstate in the top image), plus 1 GiB of qcow2 metadata: bounded, yet never in the way.
  const fsizeBytes = largestFile + maxDiskBytes + 8 * vm.spec.memoryMiB * 2 ** 20 + 2 ** 30;
  const cgroups = hostCgroupSpecs(options.cgroupId ?? vm.id);
  const devices = jailDevices(accel);
  const plan: JailPlan = {
    uid, gid: uid, pidFile: jailPidFile(l), rootDir: jailRootDir(l), cgroups, pidsMax, devices, readWrite, readOnly, fds, taps: jailTaps, netns,
    nofile: 4096, nproc: pidsMax, fsizeBytes, chdir: l.runDir, qemuBinary, qemuArgv: buildQemuArgv(backing, tapFds),
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
      mounts: { readOnly: ["/usr (and the /bin, /lib* links)", "/etc/ld.so.cache", ...readOnly], readWrite, devices, descriptors: [...fds.map((f) => `${f.fd}: ${f.path}`), ...jailTaps.map((t) => `${t.fd}: tap ${t.ifname} in ${t.netnsPath}`)] },
      limits: { nofile: plan.nofile, nproc: plan.nproc, fsizeBytes, core: 0 },
    },
  };
}

/** Before `ensurePrivateDir`: directories a previous jailed run handed to the VM's uid come back to root. */
export function reclaimJailDirs(l: VmLayout): void {
  if (existsSync(l.runDir)) lchownSync(l.runDir, 0, 0);
}

/** Hands QEMU exactly the files it writes: its run dir (0700), console log and top disks (0600). Guest RAM is a memfd. */
export function handOverFiles(vm: VmRecord, l: VmLayout, uid: number, extra: readonly string[] = []): void {
  mkdirSync(jailRootDir(l), { recursive: true, mode: 0o700 });
  chownSync(l.runDir, uid, uid);
  chmodSync(l.runDir, 0o700);
  for (const file of [l.consoleLog, ...vm.spec.disks.map((d) => diskFile(l.disksDir, d.name)), ...extra]) {
    if (!existsSync(file)) continue;
    chownSync(file, uid, uid);
    chmodSync(file, 0o600);
  }
}
