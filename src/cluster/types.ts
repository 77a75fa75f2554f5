/**
 * The shapes the cluster's parts share (docs/cluster.md): certificates, the manager→agent calls, migration
 * progress and results, placement inputs. Pure types: every part imports them, none of them imports a part.
 */

/** The role a certificate's subject names (`O=vigil, OU=<role>, CN=<name>`). */
export type CertRole = "manager" | "agent" | "migration";

/** A certificate and its key, PEM; `caPem` is the vigil CA that signed it. */
export interface CertBundle {
  caPem: string;
  certPem: string;
  keyPem: string;
}

/** What a verified peer certificate says about who is on the other end. */
export interface PeerIdentity {
  role: CertRole;
  name: string;
  /** SHA-256 fingerprint of the peer's certificate (AA:BB:…). */
  fingerprint: string;
}

/** Headers the manager sends with every agent request. */
export const ACTOR_HEADER = "x-vigil-actor";
export const EPOCH_HEADER = "x-vigil-epoch";

/** The user the manager authenticated, as the agent's Guard needs it. */
export interface DelegatedActor {
  name: string;
  roles: string[];
  groups: string[];
  introspect: boolean;
}

/** A host as the manager records it. */
export interface HostRecord {
  name: string;
  /** IP:PORT of the agent's cluster listener. */
  address: string;
  state: "ready" | "unreachable" | "fenced" | "removed";
  /** SHA-256 fingerprint of the certificate issued to it. */
  certFingerprint: string;
  lastSeen: string | null;
  addedAt: string;
}

/** What an agent reports at each heartbeat. */
export interface HostStatus {
  name: string;
  memTotalMiB: number;
  memFreeMiB: number;
  cpus: number;
  /** 1-minute load average. */
  load1: number;
  /** storage: where the VM's disks live ("shared": the host's shared storage, docs/cluster.md "Shared storage and HA restarts"). */
  vms: { id: string; name: string; state: string; memoryMiB: number; vcpus: number; owner: string; storage?: "local" | "shared" }[];
  version: string;
  /** The newest lease epoch this agent has accepted. */
  epoch: number;
}

/** Limits a migration runs under. */
export interface MigrationLimits {
  /** Upper bound of the adaptive downtime limit (ms). */
  maxDowntimeMs: number;
  /** The whole migration is cancelled after this long (ms). */
  timeoutMs: number;
  /** Bandwidth cap in bytes/s; 0 = QEMU's maximum. */
  maxBandwidth: number;
  /** What the manager negotiated with both ends (src/migration/negotiate.ts), kept with the limits in the row. */
  negotiated?: import("../migration/negotiate.ts").NegotiatedPlan;
}

export type MigrationPhase = "setup" | "disks" | "ram" | "switchover" | "completed" | "failed" | "cancelled";

/** One progress sample, from query-migrate and query-block-jobs. */
export interface MigrationProgress {
  phase: MigrationPhase;
  ramTransferred: number;
  ramRemaining: number;
  ramTotal: number;
  /** Bytes the guest dirties per second (QEMU's dirty-pages-rate × page size). */
  dirtyRate: number;
  /** QEMU's expected downtime at the current rate (ms). */
  expectedDowntimeMs: number;
  /** The downtime limit in force now (adaptive). */
  downtimeLimitMs: number;
  /** Completed pre-copy passes. */
  iterations: number;
  diskDone: number;
  diskTotal: number;
}

/** What a finished migration measured. */
export interface MigrationResult {
  /** QEMU's measured downtime (ms). */
  downtimeMs: number;
  /** From the migrate command to completed (ms), including the disk mirror. */
  totalMs: number;
  ramTransferred: number;
  diskTransferred: number;
  iterations: number;
  /** The downtime limit when it converged (ms). */
  finalDowntimeLimitMs: number;
  /** Whether auto-converge throttled the vCPUs (percent at the end, 0 if never). */
  throttlePercent: number;
}

/** Placement inputs: one host's capacity and what is on it. */
export interface HostLoad {
  name: string;
  memTotalMiB: number;
  /** Memory kept for the host itself and reservations; never placed on. */
  memReservedMiB: number;
  cpus: number;
  vms: { name: string; memoryMiB: number; vcpus: number; /** pinned VMs never move */ pinned?: boolean }[];
  /** Only ready hosts take VMs. */
  ready: boolean;
}
