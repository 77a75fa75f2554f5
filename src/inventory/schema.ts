/**
 * The inventory's tables as TypeScript types (Kysely). Columns are portable between SQLite and PostgreSQL: text
 * ids (UUIDs), ISO-8601 text timestamps, JSON stored as text, integers for counters and booleans (0/1).
 */
import type { Generated, Insertable, Selectable, Updateable } from "kysely";

export interface VmsTable {
  id: string;
  name: string;
  spec: string; // JSON VmSpec
  state: string;
  host: string;
  accelerator: string | null;
  vmgenid: string;
  generation: number;
  pid: number | null;
  owner: string; // "user:NAME" or "group:NAME"
  approver: string | null;
  purpose: string | null;
  expires_at: string | null;
  labels: string; // JSON object
  lineage: string; // JSON: where the VM came from
  is_template: number;
  created_by: string;
  created_at: string;
  updated_at: string;
  state_changed_at: string;
  /** The snapshot the VM's state descends from (parent of the next snapshot). */
  current_snapshot_id: string | null;
  /** A memory snapshot to load on the next start (an imported bundle with saved memory). */
  resume_snapshot_id: string | null;
  /** The template whose disks this VM's disks are overlays on (linked clones). */
  base_vm_id: string | null;
  /** Namespace of the VM's extra-VM monotonic store: shared along a lineage of reverts, new for clones. */
  vtime_ns: string;
  /** JSON: facts that must not go backwards (patch level, signature version, credential epoch, ...). */
  security_floor: string;
}

export interface SnapshotsTable {
  id: string;
  vm_id: string;
  name: string;
  parent_id: string | null;
  description: string;
  kind: string;
  spec: string;
  generation: number;
  vmgenid: string;
  vm_state_size: number;
  state_sha256: string | null;
  disk_bytes: number;
  floor: string;
  guest_facts: string;
  single_use: number;
  resumed_count: number;
  created_by: string;
  created_at: string;
}

export interface ImagesTable {
  name: string;
  disk: string;
  source_format: string;
  size: number;
  virtual_size: number;
  sha256: string;
  description: string;
  source: string;
  created_by: string;
  created_at: string;
}

export interface TrustedKeysTable {
  key_id: string;
  public_key: string;
  name: string;
  added_by: string;
  added_at: string;
}

export interface GenerationsTable {
  id: Generated<number>;
  vm_id: string;
  generation: number;
  parent_generation: number | null;
  vmgenid: string;
  reason: string;
  snapshot: string | null;
  source_vm_id: string | null;
  reseed: string | null;
  created_by: string;
  created_at: string;
}

export interface VtimeCountersTable {
  ns: string;
  name: string;
  value: number;
  last_rid: string | null;
  updated_at: string;
}

export interface VtimeRecordsTable {
  ns: string;
  stream: string;
  seq: number;
  data: string;
  rid: string | null;
  time: string;
}

export interface AuditLogTable {
  seq: number; // 1, 2, 3 ... assigned by the appender, never by the database
  id: string;
  time: string;
  actor: string;
  action: string;
  target_kind: string;
  target_id: string | null;
  target_name: string | null;
  result: string; // ok | denied | error
  host: string;
  request_id: string | null;
  details: string; // JSON object
  prev_hash: string;
  hash: string;
}

export interface AuditCheckpointsTable {
  seq: number; // the audit record this checkpoint covers up to
  hash: string;
  time: string;
  key_id: string;
  signature: string; // base64 Ed25519 over the checkpoint statement
  root_hash: string | null; // the Merkle root at seq (a signed tree head); null for pre-Merkle checkpoints
}

export interface AuditTreeTable {
  level: number;
  idx: number;
  hash: string; // hex
}

export interface UsersTable {
  id: string;
  name: string;
  roles: string; // JSON array of role names
  introspect: number; // the separate permission to read guest memory
  disabled: number;
  created_at: string;
  created_by: string;
  quotas: string | null; // JSON per-user quota overrides; null: the site defaults
}

export interface TokensTable {
  id: string;
  user_id: string;
  name: string;
  hash: string; // sha256 of the token; the token itself is shown once and never stored
  created_at: string;
  expires_at: string | null;
  last_used_at: string | null;
  revoked: number;
  /** The token used to mint this one (it may not outlive it; revoking it revokes this one). */
  parent_id: string | null;
}

export interface GroupsTable {
  name: string;
  created_at: string;
}

export interface GroupMembersTable {
  group_name: string;
  user_id: string;
}

export interface VmLocationsTable {
  id: Generated<number>;
  vm_id: string;
  host: string;
  path: string;
  since: string;
  until: string | null;
}

export interface DataFilesTable {
  id: string;
  vm_id: string;
  host: string;
  path: string;
  purpose: string; // disk | overlay | ram | snapshot | bundle | log | ...
  size: number | null;
  sha256: string | null;
  created_at: string;
  removed_at: string | null;
  removed_how: string | null; // purged | deleted | unreachable | ...
  dev: string | null; // device and inode of the file vigil made (0003); null: not a file vigil made
  ino: string | null;
  origin: Generated<string>; // vigil (made by vigil, purgeable) | client (reported by a client, never purged)
}

export interface IntentsTable {
  id: string;
  vm_id: string;
  kind: string; // materialize | snapshot-create | snapshot-revert
  path: string;
  data: Generated<string>;
  created_at: string;
}

export interface KvTable {
  key: string;
  value: string;
}

export interface ImportedBundlesTable {
  id: Generated<number>;
  manifest_sha256: string;
  signer_key_id: string;
  source_vm_id: string;
  vm_id: string;
  imported_by: string;
  imported_at: string;
  replay: number; // 1 when imported again on purpose (allowReplay)
}

export interface Database {
  vms: VmsTable;
  audit_log: AuditLogTable;
  audit_checkpoints: AuditCheckpointsTable;
  audit_tree: AuditTreeTable;
  users: UsersTable;
  tokens: TokensTable;
  groups: GroupsTable;
  group_members: GroupMembersTable;
  vm_locations: VmLocationsTable;
  data_files: DataFilesTable;
  intents: IntentsTable;
  kv: KvTable;
  snapshots: SnapshotsTable;
  trusted_keys: TrustedKeysTable;
  images: ImagesTable;
  generations: GenerationsTable;
  vtime_counters: VtimeCountersTable;
  vtime_records: VtimeRecordsTable;
  imported_bundles: ImportedBundlesTable;
  jail_uids: JailUidsTable;
  jail_uid_counter: JailUidCounterTable;
  networks: NetworksTable;
  nic_addresses: NicAddressesTable;
  fw_policies: FwPoliciesTable;
  quarantine: QuarantineTable;
  vm_postures: VmPosturesTable;
  recordings: RecordingsTable;
  posture_policies: PosturePoliciesTable;
  quarantine_services: QuarantineServicesTable;
  net_forwards: NetForwardsTable;
  net_captures: NetCapturesTable;
  hosts: HostsTable;
  placements: PlacementsTable;
  migrations: MigrationsTable;
  cluster_events: ClusterEventsTable;
  host_leases: HostLeasesTable;
  cluster_networks: ClusterNetworksTable;
  cluster_ha_restarts: ClusterHaRestartsTable;
}

/** vigil networks (src/network): one bridge, one IPv4 range. */
export interface NetworksTable {
  id: string;
  name: string;
  cidr: string;
  gateway: string;
  bridge: string;
  dhcp: number; // 0/1
  nat: number; // 0/1 (migration 0005-network-nat)
  created_at: string;
  // A network spanning hosts over VXLAN (migration 0007-network-span); all null for a one-host network.
  span_vni: number | null;
  span_peers: string | null; // JSON array of IPv4 underlay addresses
  span_pool_first: string | null;
  span_pool_last: string | null;
}

/** The address allocated to one bridged NIC of a VM (deleted with the VM's row). */
export interface NicAddressesTable {
  vm_id: string;
  nic: string;
  network_id: string;
  ip: string;
  mac: string;
}

/** A VM's firewall policy versions (append-only; the highest version is the current policy). */
export interface FwPoliciesTable {
  vm_id: string;
  version: number;
  policy: string; // JSON Policy (src/network/firewall/policy.ts)
  actor: string;
  created_at: string;
}

/** VMs in the quarantine zone (one row per quarantined VM). */
export interface QuarantineTable {
  vm_id: string;
  since: string;
  reason: string;
  actor: string;
}

/** A recording of a VM's execution (docs/recording.md); `meta` is JSON RecordingMeta (src/recording/recording-repository.ts). */
export interface RecordingsTable {
  id: string;
  name: string;
  vm_id: string;
  state: string;
  meta: string;
  created_at: string;
  updated_at: string;
}

/** A VM's posture (docs/transience.md "Posture"). */
export interface VmPosturesTable {
  vm_id: string;
  scan: string | null; // JSON ScanRecord (src/posture/posture-repository.ts)
  last_running_at: string | null;
  last_patched_at: string | null;
  updated_at: string;
}

/** Network-access gate policies by scope ("default", "vm:<id>", "label:<k>=<v>"). */
export interface PosturePoliciesTable {
  scope: string;
  policy: string; // JSON GatePolicy
  actor: string;
  updated_at: string;
}

/** The quarantine zone's named services: the only destinations a quarantined VM may open connections to. */
export interface QuarantineServicesTable {
  name: string;
  ip: string;
  proto: string; // tcp | udp
  port: number;
}

/** Host-loopback port forwards to a guest port (docs/network.md "Port forwards"); re-opened at daemon start. */
export interface NetForwardsTable {
  id: string;
  vm_id: string;
  nic: string;
  guest_port: number;
  listen_host: string;
  listen_port: number;
  created_by: string;
  created_at: string;
}

/** Mirror captures (pcap files under the data dir's captures/). */
export interface NetCapturesTable {
  id: string;
  vm_id: string;
  nic: string;
  path: string;
  bytes: number;
  packets: number;
  stopped_by: string;
  created_by: string;
  started_at: string;
  stopped_at: string | null;
}

/** The uid (= gid) of each VM's jailed QEMU, and the next one to hand out (one row, id 1). */
export interface JailUidsTable {
  vm_id: string;
  uid: number;
}

export interface JailUidCounterTable {
  id: number;
  next: number;
}

/** The cluster's hosts as the manager records them (migration 0006-cluster; src/cluster/cluster-repository.ts). */
export interface HostsTable {
  name: string;
  address: string; // IP:PORT of the agent's cluster listener
  state: string; // ready | unreachable | fenced | removed
  cert_fingerprint: string;
  last_seen: string | null;
  added_at: string;
  status: string | null; // JSON HostStatus of the last heartbeat
}

/** Which host holds which VM. */
export interface PlacementsTable {
  vm_id: string;
  vm_name: string;
  host: string;
  owner: string;
  updated_at: string;
  /** 0007-cluster-ha: 1 = HA (restart on another host when this one is fenced); default 0. */
  ha?: number | undefined;
}

/** Live migrations, one row each, kept after they end. */
export interface MigrationsTable {
  id: string;
  vm_id: string;
  vm_name: string;
  source: string;
  target: string;
  state: string; // running | completed | failed | cancelled
  phase: string; // MigrationPhase
  requested_by: string;
  options: string; // JSON MigrationLimits
  progress: string | null; // JSON MigrationProgress
  result: string | null; // JSON MigrationResult
  error: string | null;
  started_at: string;
  updated_at: string;
  finished_at: string | null;
}

/** Durable cluster events; seq only grows, in commit order. */
export interface ClusterEventsTable {
  seq: Generated<number>;
  time: string;
  kind: string;
  subject: string;
  payload: string; // JSON object
}

/** A host's lease (src/cluster/leases.ts): epoch = fencing token, ISO-8601 times. */
export interface HostLeasesTable {
  host: string;
  epoch: number;
  holder: string;
  expires_at: string;
  renewed_at: string;
}

/** The manager's claim on one HA restart (src/cluster/ha-claims.ts): unique per (vm_id, lost_epoch). */
export interface ClusterHaRestartsTable {
  vm_id: string;
  vm_name: string;
  lost_epoch: number;
  from_host: string;
  to_host: string;
  /** claimed → restarted | failed */
  state: string;
  error: string | null;
  claimed_by: string;
  claimed_at: string;
  finished_at: string | null;
}

export type SnapshotRow = Selectable<SnapshotsTable>;
export type ImageRow = Selectable<ImagesTable>;

export type VmRow = Selectable<VmsTable>;
export type NewVmRow = Insertable<VmsTable>;
export type VmRowUpdate = Updateable<VmsTable>;
export type AuditRow = Selectable<AuditLogTable>;
export type UserRow = Selectable<UsersTable>;
export type DataFileRow = Selectable<DataFilesTable>;

/** The manager's cluster networks (migration 0007-network-span): one VNI each, made on `hosts` (JSON array). */
export interface ClusterNetworksTable {
  name: string;
  cidr: string;
  dhcp: number; // 0/1
  vni: number;
  hosts: string;
  created_by: string;
  created_at: string;
}
