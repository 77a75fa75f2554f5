/** The shapes of the API's answers the console uses (the full schemas are at /openapi.json). */

export type VmState = "stopped" | "starting" | "running" | "paused" | "stopping" | "crashed" | "incoming";

export interface Vm {
  id: string;
  name: string;
  state: VmState;
  host: string;
  accelerator: string | null;
  vmgenid: string;
  generation: number;
  pid: number | null;
  owner: string;
  approver: string | null;
  purpose: string | null;
  expiresAt: string | null;
  expired: boolean;
  labels: Record<string, string>;
  lineage: Record<string, unknown>;
  template: boolean;
  createdBy: string;
  createdAt: string;
  stateChangedAt: string;
  spec: { vcpus: number; memoryMiB: number; image?: string; [k: string]: unknown };
  nics: { name: string; network: string; mac: string; ip: string; tap: string }[];
  posture?: string;
  [k: string]: unknown;
}

/** `GET /v1/vms?view=summary`: what the inventory lists of each VM. */
export interface VmSummary {
  id: string;
  name: string;
  state: VmState;
  host: string;
  owner: string;
  purpose: string | null;
  expiresAt: string | null;
  expired: boolean;
  labels: Record<string, string>;
  template: boolean;
  generation: number;
  vcpus: number;
  memoryMiB: number;
  stateChangedAt: string;
  posture?: string;
}

export interface Image {
  name: string;
  kind: "builtin" | "template" | "imported";
  description: string;
  sizeBytes: number;
}

export interface AuditRecord {
  seq: number;
  id: string;
  time: string;
  actor: string;
  action: string;
  target: { kind: string; id: string | null; name: string | null };
  result: "ok" | "denied" | "error" | "intent";
  host: string;
  requestId: string | null;
  details?: Record<string, unknown>;
}

export interface Snapshot {
  name: string;
  parent: string | null;
  kind: "disk" | "memory";
  description: string;
  createdBy: string;
  createdAt: string;
  generation: number;
}

export interface SessionInfo {
  /** A host's daemon, or the cluster manager (hosts and migrations pages; what it cannot forward is hidden). */
  server: "host" | "manager";
  user: { name: string; roles: string[]; groups: string[] };
  csrf: string;
  can: string[];
  ownedCan: string[];
}

export interface VmMetrics {
  at: string;
  running: boolean;
  cpuSeconds: number;
  rssBytes: number;
  memoryBytes: number;
  diskReadBytes: number | null;
  diskWrittenBytes: number | null;
  netRxBytes: number | null;
  netTxBytes: number | null;
}

/** A host of the cluster as the manager knows it (GET /v1/hosts): its record and its last heartbeat. */
export interface ClusterHost {
  name: string;
  address: string;
  state: "ready" | "unreachable" | "fenced" | "removed";
  lastSeen: string | null;
  addedAt: string;
  status: { memTotalMiB: number; memFreeMiB: number; cpus: number; load1: number; version: string; vms: { name: string; state: string }[] } | null;
}

/** A live migration (POST /v1/vms/NAME/migrate, GET /v1/migrations[/ID]). */
export interface Migration {
  id: string;
  vmName: string;
  source: string;
  target: string;
  state: "running" | "completed" | "failed" | "cancelled";
  phase: string;
  requestedBy: string;
  progress: { phase: string; ramTransferred: number; ramRemaining: number; ramTotal: number; expectedDowntimeMs: number } | null;
  result: { downtimeMs?: number; totalMs?: number } | null;
  error: string | null;
  startedAt: string;
  finishedAt: string | null;
}
