/**
 * The QEMU jail, host side (see docs/jail.md): what the daemon tells `native/vigil-jail` for one VM. The argv is a
 * pure function of a plan (unit-tested); the rest finds the cgroup hierarchies in /proc/self/mountinfo, decides
 * whether jailing is possible here, and removes a VM's cgroup directories after it is gone.
 */
import { existsSync, readFileSync, rmdirSync, statSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { VigilError } from "../errors.ts";

/** Where bootstrap.sh builds the helper; VIGIL_JAIL_HELPER overrides it. */
export const JAIL_HELPER = process.env.VIGIL_JAIL_HELPER ?? resolve(dirname(fileURLToPath(import.meta.url)), "../../native/build/vigil-jail");

/** The only opt-out: VIGIL_JAIL=off, for the benchmark's and tests' unjailed baseline. Logged and shown. */
export function jailEnabled(): boolean {
  return process.env.VIGIL_JAIL !== "off";
}

/** Controllers whose per-VM directory the helper creates and joins (pids and devices are also configured). */
const JAIL_CONTROLLERS = ["pids", "devices", "memory", "cpu"] as const;

export interface JailPlan {
  uid: number;
  gid: number;
  /** The daemon's pid file for this QEMU (root-owned 0600, outside anything QEMU can write). */
  pidFile: string;
  /** An empty root-owned directory the helper mounts the jail's tmpfs root on. */
  rootDir: string;
  /** `MOUNT:REL` per hierarchy (see `cgroupSpecs`). */
  cgroups: string[];
  pidsMax: number;
  /** Host device nodes bind-mounted into the jail's /dev and allowed by the devices cgroup. */
  devices: string[];
  /** Bind-mounted read-write at the same absolute path. */
  readWrite: string[];
  /** Bind-mounted read-only at the same absolute path (kernel, initrd). */
  readOnly: string[];
  /** Files the helper opens read-only as root at these descriptors, for QEMU's `-add-fd` (backing layers). */
  fds: Array<{ fd: number; path: string }>;
  /**
   * Taps the helper opens as root before unsharing the network namespace: `IFNAME` inside the namespace at
   * `netnsPath` (vigil's, /run/netns/...), handed to QEMU at descriptor `fd` for `-netdev tap,fd=`.
   */
  taps: Array<{ fd: number; netnsPath: string; ifname: string }>;
  /** A private network namespace (no NIC can reach the host network). */
  netns: boolean;
  nofile: number;
  nproc: number;
  fsizeBytes: number;
  chdir: string;
  qemuBinary: string;
  qemuArgv: readonly string[];
}

/** The helper's argv for `plan`: options, `--`, the QEMU binary and its argv. */
export function buildJailArgv(plan: JailPlan): string[] {
  const argv = ["--uid", String(plan.uid), "--gid", String(plan.gid), "--pid-file", plan.pidFile, "--root", plan.rootDir];
  for (const c of plan.cgroups) argv.push("--cgroup", c);
  argv.push("--pids-max", String(plan.pidsMax));
  for (const d of plan.devices) argv.push("--dev", d);
  for (const p of plan.readOnly) argv.push("--bind-ro", p);
  for (const p of plan.readWrite) argv.push("--bind-rw", p);
  for (const f of plan.fds) argv.push("--open-ro", `${f.fd}:${f.path}`);
  for (const t of plan.taps) argv.push("--tap", `${t.fd}:${t.netnsPath}:${t.ifname}`);
  if (plan.netns) argv.push("--netns");
  argv.push("--nofile", String(plan.nofile), "--nproc", String(plan.nproc), "--fsize", String(plan.fsizeBytes), "--chdir", plan.chdir);
  argv.push("--", plan.qemuBinary, ...plan.qemuArgv);
  return argv;
}

/** The device nodes QEMU gets: the usual four, and /dev/kvm only when it accelerates with KVM. */
export function jailDevices(accel: "kvm" | "tcg"): string[] {
  return ["/dev/null", "/dev/zero", "/dev/random", "/dev/urandom", ...(accel === "kvm" ? ["/dev/kvm"] : [])];
}

/** Threads QEMU may have: its worker pool (64), one per vCPU, and the fixed ones (main, RCU, I/O, the helper). */
export function jailPidsMax(vcpus: number): number {
  return 96 + 2 * vcpus;
}

/**
 * `MOUNT:REL` for each hierarchy, the per-VM directory nested under the daemon's own cgroup there (so the limits
 * of whatever contains the daemon still hold for its VMs): `<mount>:<daemon's path>/vigil-<uuid>`. Pure over the
 * text of /proc/self/mountinfo and /proc/self/cgroup.
 */
export function cgroupSpecs(uuid: string, mountinfo: string, selfCgroup: string): string[] {
  const own = new Map<string, string>(); // controller list (v1) or "" (v2) -> path
  for (const line of selfCgroup.split("\n")) {
    const m = /^\d+:([^:]*):(.*)$/.exec(line);
    if (m) own.set(m[1]!, m[2]!);
  }
  const specs: string[] = [];
  for (const line of mountinfo.split("\n")) {
    const [pre, post] = line.split(" - ");
    if (!pre || !post) continue;
    const mountPoint = pre.split(" ")[4];
    const [fstype, , superOpts = ""] = post.split(" ");
    if (!mountPoint) continue;
    let key: string | undefined;
    if (fstype === "cgroup2") key = "";
    else if (fstype === "cgroup") {
      const ctrls = superOpts.split(",").filter((o) => (JAIL_CONTROLLERS as readonly string[]).includes(o));
      if (ctrls.length === 0) continue;
      key = [...own.keys()].find((k) => k.split(",").some((c) => ctrls.includes(c)));
    } else continue;
    if (key === undefined || !own.has(key)) continue;
    const base = own.get(key)!.replace(/^\/+|\/+$/g, "");
    specs.push(`${mountPoint}:${base ? `${base}/` : ""}vigil-${uuid}`);
  }
  return [...new Set(specs)];
}

/** The cgroup specs for this VM on this host. */
export function hostCgroupSpecs(uuid: string): string[] {
  return cgroupSpecs(uuid, readFileSync("/proc/self/mountinfo", "utf8"), readFileSync("/proc/self/cgroup", "utf8"));
}

/** The directory a `MOUNT:REL` spec names. */
export function cgroupDir(spec: string): string {
  const i = spec.indexOf(":");
  return join(spec.slice(0, i), spec.slice(i + 1));
}

/**
 * Removes a VM's cgroup directories left behind. Both removals are needed, neither is enough alone: the helper's
 * (leave_cgroups in native/vigil-jail.c) is the normal one — only it knows the moment the group is empty, and it
 * runs whenever QEMU exits (stop, guest poweroff, crash), also while the daemon is down. This one, after a failed
 * start, a kill and in recover(), is the fallback for a helper that never got there: SIGKILLed (its QEMU, pid 1 of
 * its own namespace, lives on and exits unwatched), or died (exit 125) after joining the groups. While the helper
 * is still inside, the rmdir fails with EBUSY and the helper removes the directory as it leaves.
 */
export function removeCgroups(specs: readonly string[], retries = 50): void {
  const busy: string[] = [];
  for (const s of specs) {
    try {
      rmdirSync(cgroupDir(s));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "EBUSY") busy.push(s);
      /* otherwise gone already */
    }
  }
  // Busy: a task is still leaving it (a killed QEMU not yet fully exited). Its helper removes it when it is there;
  // when the helper itself was killed nobody else would, so try again every 100 ms for a few seconds.
  if (busy.length > 0 && retries > 0) setTimeout(() => removeCgroups(busy, retries - 1), 100).unref();
}

/** Refuses to start a VM unjailed: the daemon must be root and the helper built. */
export function checkJailAvailable(): void {
  if (typeof process.getuid !== "function" || process.getuid() !== 0) {
    throw new VigilError("VIGIL_HOST", "Cannot jail QEMU: vigil is not running as root (set VIGIL_JAIL=off to run VMs unjailed, for tests only)");
  }
  if (!existsSync(JAIL_HELPER) || (statSync(JAIL_HELPER).mode & 0o111) === 0) {
    throw new VigilError("VIGIL_HOST", `Cannot jail QEMU: the helper ${JSON.stringify(JAIL_HELPER)} is missing (run scripts/bootstrap.sh, or set VIGIL_JAIL=off for tests only)`);
  }
}

/** What the kernel says about a live QEMU's confinement (read from /proc on the host: not what was planned). */
export interface ObservedConfinement {
  uid: number;
  gid: number;
  noNewPrivs: boolean;
  /** 2 = a seccomp filter (QEMU's -sandbox) is installed. */
  seccompMode: number;
  capEff: string;
  capBnd: string;
  /** Namespaces it does not share with the daemon. */
  namespaces: string[];
  cgroups: string[];
  /** Its mount points, as it sees them. */
  mounts: string[];
}

const NAMESPACES = ["mnt", "pid", "ipc", "uts", "net", "cgroup", "user"] as const;

/** Reads the confinement of process `pid`; undefined when it is gone. */
export function observeConfinement(pid: number): ObservedConfinement | undefined {
  try {
    const status = readFileSync(`/proc/${pid}/status`, "utf8");
    const field = (k: string) => new RegExp(`^${k}:\\s*(.*)$`, "m").exec(status)?.[1]?.trim() ?? "";
    const namespaces = NAMESPACES.filter((ns) => {
      try {
        return statSync(`/proc/${pid}/ns/${ns}`).ino !== statSync(`/proc/self/ns/${ns}`).ino;
      } catch {
        return false;
      }
    });
    const cgroups = readFileSync(`/proc/${pid}/cgroup`, "utf8").trim().split("\n").filter((l) => l.includes("vigil-"));
    const mounts = readFileSync(`/proc/${pid}/mountinfo`, "utf8").trim().split("\n").map((l) => l.split(" ")[4] ?? "").slice(0, 200);
    return {
      uid: Number(field("Uid").split(/\s+/)[0]),
      gid: Number(field("Gid").split(/\s+/)[0]),
      noNewPrivs: field("NoNewPrivs") === "1",
      seccompMode: Number(field("Seccomp")),
      capEff: field("CapEff"),
      capBnd: field("CapBnd"),
      namespaces,
      cgroups,
      mounts,
    };
  } catch {
    return undefined;
  }
}
