/**
 * Where vigil keeps its state. Everything a daemon owns lives under one VIGIL_HOME, so two daemons with different
 * homes never see each other (tests rely on it). The guest-image cache is shared between homes: it holds only
 * what set-up builds from Debian packages, never a VM's data.
 */
import { homedir } from "node:os";
import { join } from "node:path";

const isRoot = () => typeof process.getuid === "function" && process.getuid() === 0;

/** VIGIL_HOME: `/var/lib/vigil` for root, `~/.local/share/vigil` otherwise. */
export function vigilHome(env: NodeJS.ProcessEnv = process.env): string {
  if (env.VIGIL_HOME) return env.VIGIL_HOME;
  return isRoot() ? "/var/lib/vigil" : join(homedir(), ".local", "share", "vigil");
}

/**
 * The machine-wide claims on VM uids (host/uid-claims.ts): outside every VIGIL_HOME, because two daemons on one
 * machine (a trial cluster's agents, a second home) must never give two VMs the same uid.
 */
export function vigilUidClaims(env: NodeJS.ProcessEnv = process.env): string {
  if (env.VIGIL_UID_CLAIMS) return env.VIGIL_UID_CLAIMS;
  return isRoot() ? "/var/lib/vigil-uids" : join(homedir(), ".local", "share", "vigil-uids");
}

/** The shared cache of built images: `/var/cache/vigil` for root, `~/.cache/vigil` otherwise. */
export function vigilCache(env: NodeJS.ProcessEnv = process.env): string {
  if (env.VIGIL_CACHE) return env.VIGIL_CACHE;
  return isRoot() ? "/var/cache/vigil" : join(homedir(), ".cache", "vigil");
}

/** The fixed layout below VIGIL_HOME. Directories marked private are created 0700. */
export function homeLayout(home: string) {
  return {
    home,
    database: join(home, "vigil.db"),
    runDir: join(home, "run"), // private: the daemon's socket and pid file
    socket: join(home, "run", "vigil.sock"),
    pidFile: join(home, "run", "vigil.pid"),
    vmsDir: join(home, "vms"), // private: one directory per VM, named by its uuid
    keysDir: join(home, "keys"), // private: the site key
    imagesDir: join(home, "images"), // imported images and templates' disks
    logDir: join(home, "log"),
  };
}

export type HomeLayout = ReturnType<typeof homeLayout>;

/** The files of one VM below its private directory. Sockets sit in `run/` so paths stay short (108-byte limit). */
/** A VM's files; a shared-storage VM's disks are in `sharedStorage`/<uuid>/disks (src/cluster/shared-storage.ts). */
export function vmLayout(vmsDir: string, uuid: string, sharedStorage?: string) {
  const dir = join(vmsDir, uuid);
  const run = join(dir, "run");
  return {
    dir,
    runDir: run,
    qmpSocket: join(run, "qmp.sock"),
    serialSocket: join(run, "serial.sock"),
    agentSocket: join(run, "agent.sock"),
    vtimeSocket: join(run, "vtime.sock"),
    /** A recording's UARTs are QEMU `pipe` chardevs: FIFOs `<base>.in` (towards the guest) and `<base>.out` (src/host/fifo.ts). */
    serialPipe: join(run, "serial-rr"),
    agentPipe: join(run, "agent-rr"),
    pidFile: join(run, "qemu.pid"),
    qemuLog: join(run, "qemu.log"),
    consoleLog: join(dir, "console.log"),
    disksDir: sharedStorage === undefined ? join(dir, "disks") : join(sharedStorage, uuid, "disks"),
  };
}

export type VmLayout = ReturnType<typeof vmLayout>;
