/**
 * Versioned schema migrations, written with Kysely's schema builder so the same steps run on SQLite and
 * PostgreSQL. Migrations are append-only: a released one is never edited, a change is a new entry.
 */
import { type Kysely, type Migration, type MigrationProvider, Migrator, sql } from "kysely";
import { VigilError } from "../errors.ts";
import { PostgresSchemaPlugin, dialectOf } from "./dialect.ts";

const migrations: Record<string, Migration> = {
  "0001-foundation": {
    async up(db: Kysely<unknown>) {
      await db.schema
        .createTable("vms")
        .addColumn("id", "text", (c) => c.primaryKey())
        .addColumn("name", "text", (c) => c.notNull().unique())
        .addColumn("spec", "text", (c) => c.notNull())
        .addColumn("state", "text", (c) => c.notNull())
        .addColumn("host", "text", (c) => c.notNull())
        .addColumn("accelerator", "text")
        .addColumn("vmgenid", "text", (c) => c.notNull())
        .addColumn("generation", "integer", (c) => c.notNull().defaultTo(1))
        .addColumn("pid", "integer")
        .addColumn("owner", "text", (c) => c.notNull())
        .addColumn("approver", "text")
        .addColumn("purpose", "text")
        .addColumn("expires_at", "text")
        .addColumn("labels", "text", (c) => c.notNull().defaultTo("{}"))
        .addColumn("lineage", "text", (c) => c.notNull().defaultTo("{}"))
        .addColumn("is_template", "integer", (c) => c.notNull().defaultTo(0))
        .addColumn("created_by", "text", (c) => c.notNull())
        .addColumn("created_at", "text", (c) => c.notNull())
        .addColumn("updated_at", "text", (c) => c.notNull())
        .addColumn("state_changed_at", "text", (c) => c.notNull())
        .execute();

      await db.schema
        .createTable("audit_log")
        .addColumn("seq", "integer", (c) => c.primaryKey())
        .addColumn("id", "text", (c) => c.notNull().unique())
        .addColumn("time", "text", (c) => c.notNull())
        .addColumn("actor", "text", (c) => c.notNull())
        .addColumn("action", "text", (c) => c.notNull())
        .addColumn("target_kind", "text", (c) => c.notNull())
        .addColumn("target_id", "text")
        .addColumn("target_name", "text")
        .addColumn("result", "text", (c) => c.notNull())
        .addColumn("host", "text", (c) => c.notNull())
        .addColumn("request_id", "text")
        .addColumn("details", "text", (c) => c.notNull())
        .addColumn("prev_hash", "text", (c) => c.notNull())
        .addColumn("hash", "text", (c) => c.notNull())
        .execute();
      await db.schema.createIndex("audit_log_target").on("audit_log").columns(["target_id", "seq"]).execute();

      await db.schema
        .createTable("audit_checkpoints")
        .addColumn("seq", "integer", (c) => c.primaryKey())
        .addColumn("hash", "text", (c) => c.notNull())
        .addColumn("time", "text", (c) => c.notNull())
        .addColumn("key_id", "text", (c) => c.notNull())
        .addColumn("signature", "text", (c) => c.notNull())
        .execute();

      await db.schema
        .createTable("users")
        .addColumn("id", "text", (c) => c.primaryKey())
        .addColumn("name", "text", (c) => c.notNull().unique())
        .addColumn("roles", "text", (c) => c.notNull())
        .addColumn("introspect", "integer", (c) => c.notNull().defaultTo(0))
        .addColumn("disabled", "integer", (c) => c.notNull().defaultTo(0))
        .addColumn("created_at", "text", (c) => c.notNull())
        .addColumn("created_by", "text", (c) => c.notNull())
        .execute();

      await db.schema
        .createTable("tokens")
        .addColumn("id", "text", (c) => c.primaryKey())
        .addColumn("user_id", "text", (c) => c.notNull().references("users.id"))
        .addColumn("name", "text", (c) => c.notNull())
        .addColumn("hash", "text", (c) => c.notNull().unique())
        .addColumn("created_at", "text", (c) => c.notNull())
        .addColumn("expires_at", "text")
        .addColumn("last_used_at", "text")
        .addColumn("revoked", "integer", (c) => c.notNull().defaultTo(0))
        .execute();

      await db.schema
        .createTable("groups")
        .addColumn("name", "text", (c) => c.primaryKey())
        .addColumn("created_at", "text", (c) => c.notNull())
        .execute();
      await db.schema
        .createTable("group_members")
        .addColumn("group_name", "text", (c) => c.notNull().references("groups.name"))
        .addColumn("user_id", "text", (c) => c.notNull().references("users.id"))
        .addPrimaryKeyConstraint("group_members_pk", ["group_name", "user_id"])
        .execute();

      await db.schema
        .createTable("vm_locations")
        .addColumn("id", "integer", (c) => c.primaryKey().autoIncrement())
        .addColumn("vm_id", "text", (c) => c.notNull())
        .addColumn("host", "text", (c) => c.notNull())
        .addColumn("path", "text", (c) => c.notNull())
        .addColumn("since", "text", (c) => c.notNull())
        .addColumn("until", "text")
        .execute();

      await db.schema
        .createTable("data_files")
        .addColumn("id", "text", (c) => c.primaryKey())
        .addColumn("vm_id", "text", (c) => c.notNull())
        .addColumn("host", "text", (c) => c.notNull())
        .addColumn("path", "text", (c) => c.notNull())
        .addColumn("purpose", "text", (c) => c.notNull())
        .addColumn("size", "integer")
        .addColumn("sha256", "text")
        .addColumn("created_at", "text", (c) => c.notNull())
        .addColumn("removed_at", "text")
        .addColumn("removed_how", "text")
        .execute();
      await db.schema.createIndex("data_files_vm").on("data_files").columns(["vm_id"]).execute();

      await db.schema
        .createTable("kv")
        .addColumn("key", "text", (c) => c.primaryKey())
        .addColumn("value", "text", (c) => c.notNull())
        .execute();
    },
  },
  "0002-encapsulation-and-time": {
    async up(db: Kysely<unknown>) {
      await db.schema
        .createTable("snapshots")
        .addColumn("id", "text", (c) => c.primaryKey())
        .addColumn("vm_id", "text", (c) => c.notNull())
        .addColumn("name", "text", (c) => c.notNull())
        .addColumn("parent_id", "text")
        .addColumn("description", "text", (c) => c.notNull().defaultTo(""))
        .addColumn("kind", "text", (c) => c.notNull()) // disk | memory
        .addColumn("spec", "text", (c) => c.notNull())
        .addColumn("generation", "integer", (c) => c.notNull())
        .addColumn("vmgenid", "text", (c) => c.notNull())
        .addColumn("vm_state_size", "integer", (c) => c.notNull().defaultTo(0))
        .addColumn("state_sha256", "text")
        .addColumn("disk_bytes", "integer", (c) => c.notNull().defaultTo(0))
        .addColumn("floor", "text", (c) => c.notNull().defaultTo("{}"))
        .addColumn("guest_facts", "text", (c) => c.notNull().defaultTo("{}"))
        .addColumn("single_use", "integer", (c) => c.notNull().defaultTo(0))
        .addColumn("resumed_count", "integer", (c) => c.notNull().defaultTo(0))
        .addColumn("created_by", "text", (c) => c.notNull())
        .addColumn("created_at", "text", (c) => c.notNull())
        .addUniqueConstraint("snapshots_vm_name", ["vm_id", "name"])
        .execute();

      await db.schema.alterTable("vms").addColumn("current_snapshot_id", "text").execute();
      await db.schema.alterTable("vms").addColumn("resume_snapshot_id", "text").execute();
      await db.schema.alterTable("vms").addColumn("base_vm_id", "text").execute();
      await db.schema.alterTable("vms").addColumn("vtime_ns", "text", (c) => c.notNull().defaultTo("")).execute();
      await db.schema.alterTable("vms").addColumn("security_floor", "text", (c) => c.notNull().defaultTo("{}")).execute();

      await db.schema
        .createTable("images")
        .addColumn("name", "text", (c) => c.primaryKey())
        .addColumn("disk", "text", (c) => c.notNull())
        .addColumn("source_format", "text", (c) => c.notNull())
        .addColumn("size", "integer", (c) => c.notNull())
        .addColumn("virtual_size", "integer", (c) => c.notNull())
        .addColumn("sha256", "text", (c) => c.notNull())
        .addColumn("description", "text", (c) => c.notNull())
        .addColumn("source", "text", (c) => c.notNull())
        .addColumn("created_by", "text", (c) => c.notNull())
        .addColumn("created_at", "text", (c) => c.notNull())
        .execute();

      await db.schema
        .createTable("trusted_keys")
        .addColumn("key_id", "text", (c) => c.primaryKey())
        .addColumn("public_key", "text", (c) => c.notNull())
        .addColumn("name", "text", (c) => c.notNull())
        .addColumn("added_by", "text", (c) => c.notNull())
        .addColumn("added_at", "text", (c) => c.notNull())
        .execute();

      await db.schema
        .createTable("generations")
        .addColumn("id", "integer", (c) => c.primaryKey().autoIncrement())
        .addColumn("vm_id", "text", (c) => c.notNull())
        .addColumn("generation", "integer", (c) => c.notNull())
        .addColumn("parent_generation", "integer")
        .addColumn("vmgenid", "text", (c) => c.notNull())
        .addColumn("reason", "text", (c) => c.notNull()) // create | revert | clone | import
        .addColumn("snapshot", "text")
        .addColumn("source_vm_id", "text")
        .addColumn("reseed", "text") // null until checked: seen | not-seen | unsupported
        .addColumn("created_by", "text", (c) => c.notNull())
        .addColumn("created_at", "text", (c) => c.notNull())
        .execute();
      await db.schema.createIndex("generations_vm").on("generations").columns(["vm_id", "generation"]).execute();

      await db.schema
        .createTable("vtime_counters")
        .addColumn("ns", "text", (c) => c.notNull())
        .addColumn("name", "text", (c) => c.notNull())
        .addColumn("value", "integer", (c) => c.notNull())
        .addColumn("last_rid", "text") // idempotency: a retried request returns the stored result
        .addColumn("updated_at", "text", (c) => c.notNull())
        .addPrimaryKeyConstraint("vtime_counters_pk", ["ns", "name"])
        .execute();
      await db.schema
        .createTable("vtime_records")
        .addColumn("ns", "text", (c) => c.notNull())
        .addColumn("stream", "text", (c) => c.notNull())
        .addColumn("seq", "integer", (c) => c.notNull())
        .addColumn("data", "text", (c) => c.notNull())
        .addColumn("rid", "text")
        .addColumn("time", "text", (c) => c.notNull())
        .addPrimaryKeyConstraint("vtime_records_pk", ["ns", "stream", "seq"])
        .execute();
    },
  },
  "0003-bundles": {
    async up(db: Kysely<unknown>) {
      // Every bundle imported here, by the sha256 of its signed manifest: a second import is a replay.
      await db.schema
        .createTable("imported_bundles")
        .addColumn("id", "integer", (c) => c.primaryKey().autoIncrement())
        .addColumn("manifest_sha256", "text", (c) => c.notNull())
        .addColumn("signer_key_id", "text", (c) => c.notNull())
        .addColumn("source_vm_id", "text", (c) => c.notNull())
        .addColumn("vm_id", "text", (c) => c.notNull())
        .addColumn("imported_by", "text", (c) => c.notNull())
        .addColumn("imported_at", "text", (c) => c.notNull())
        .addColumn("replay", "integer", (c) => c.notNull())
        .execute();
      await db.schema.createIndex("imported_bundles_manifest").on("imported_bundles").column("manifest_sha256").execute();
    },
  },
  "0003-provenance": {
    async up(db: Kysely<unknown>) {
      // Which file vigil made (device, inode at registration), and whether vigil made it at all: a location a
      // client reported (where it says it saved a bundle) is information only and never purged.
      await db.schema.alterTable("data_files").addColumn("dev", "text").execute();
      await db.schema.alterTable("data_files").addColumn("ino", "text").execute();
      await db.schema.alterTable("data_files").addColumn("origin", "text", (c) => c.notNull().defaultTo("vigil")).execute();
      // Before 0003 a bundle row was the client's x-vigil-output path: reported, never vigil's.
      await sql`UPDATE data_files SET origin = 'client' WHERE purpose = 'bundle'`.execute(db);
      // Work that leaves files behind if vigil dies half-way (a VM directory before its row exists, a
      // multi-disk snapshot step): finished or rolled back at the next start.
      await db.schema
        .createTable("intents")
        .addColumn("id", "text", (c) => c.primaryKey())
        .addColumn("vm_id", "text", (c) => c.notNull())
        .addColumn("kind", "text", (c) => c.notNull())
        .addColumn("path", "text", (c) => c.notNull())
        .addColumn("data", "text", (c) => c.notNull().defaultTo("{}"))
        .addColumn("created_at", "text", (c) => c.notNull())
        .execute();
    },
  },
  "0003-audit-merkle": {
    async up(db: Kysely<unknown>) {
      // The audit log's Merkle tree: every perfect subtree, (level, idx) covering leaves [idx·2^level, (idx+1)·2^level).
      // Existing logs get their tree when AuditLog.open finds it shorter than the log.
      await db.schema
        .createTable("audit_tree")
        .addColumn("level", "integer", (c) => c.notNull())
        .addColumn("idx", "integer", (c) => c.notNull())
        .addColumn("hash", "text", (c) => c.notNull())
        .addPrimaryKeyConstraint("audit_tree_pk", ["level", "idx"])
        .execute();
      // Checkpoints written from now on are signed tree heads; older ones keep root_hash null.
      await db.schema.alterTable("audit_checkpoints").addColumn("root_hash", "text").execute();
    },
  },
  "0003-jail": {
    async up(db: Kysely<unknown>) {
      // The uid each VM's jailed QEMU runs as (gid = uid). `next` only grows: a uid is never handed out twice.
      await db.schema
        .createTable("jail_uids")
        .addColumn("vm_id", "text", (c) => c.primaryKey())
        .addColumn("uid", "integer", (c) => c.notNull().unique())
        .execute();
      await db.schema
        .createTable("jail_uid_counter")
        .addColumn("id", "integer", (c) => c.primaryKey())
        .addColumn("next", "integer", (c) => c.notNull())
        .execute();
    },
  },
  "0003-auth": {
    async up(db: Kysely<unknown>) {
      // The token a token was minted with (null: minted over the unix socket or by an admin's account operation).
      await db.schema.alterTable("tokens").addColumn("parent_id", "text").execute();
      // Per-user quota overrides as JSON ({vms?, memoryMiB?, diskMiB?}); null: the site defaults.
      await db.schema.alterTable("users").addColumn("quotas", "text").execute();
    },
  },
  "0004-network": {
    async up(db: Kysely<unknown>) {
      // vigil networks (src/network): one bridge and one IPv4 range each.
      await db.schema
        .createTable("networks")
        .addColumn("id", "text", (c) => c.primaryKey())
        .addColumn("name", "text", (c) => c.notNull().unique())
        .addColumn("cidr", "text", (c) => c.notNull())
        .addColumn("gateway", "text", (c) => c.notNull())
        .addColumn("bridge", "text", (c) => c.notNull())
        .addColumn("dhcp", "integer", (c) => c.notNull())
        .addColumn("created_at", "text", (c) => c.notNull())
        .execute();
      // The address of each bridged NIC, kept for the VM's life: freed with the VM's row (vms are deleted, not marked).
      await db.schema
        .createTable("nic_addresses")
        .addColumn("vm_id", "text", (c) => c.notNull().references("vms.id").onDelete("cascade"))
        .addColumn("nic", "text", (c) => c.notNull())
        .addColumn("network_id", "text", (c) => c.notNull().references("networks.id"))
        .addColumn("ip", "text", (c) => c.notNull())
        .addColumn("mac", "text", (c) => c.notNull())
        .addUniqueConstraint("nic_addresses_ip", ["network_id", "ip"])
        .addUniqueConstraint("nic_addresses_nic", ["vm_id", "nic"])
        .execute();
    },
  },
  "0004-network-fw": {
    async up(db: Kysely<unknown>) {
      // Firewall policies: append-only versions per VM (a change writes version n+1; the highest is current).
      await db.schema
        .createTable("fw_policies")
        .addColumn("vm_id", "text", (c) => c.notNull().references("vms.id").onDelete("cascade"))
        .addColumn("version", "integer", (c) => c.notNull())
        .addColumn("policy", "text", (c) => c.notNull())
        .addColumn("actor", "text", (c) => c.notNull())
        .addColumn("created_at", "text", (c) => c.notNull())
        .addPrimaryKeyConstraint("fw_policies_pk", ["vm_id", "version"])
        .execute();
      await db.schema
        .createTable("quarantine")
        .addColumn("vm_id", "text", (c) => c.primaryKey().references("vms.id").onDelete("cascade"))
        .addColumn("since", "text", (c) => c.notNull())
        .addColumn("reason", "text", (c) => c.notNull())
        .addColumn("actor", "text", (c) => c.notNull())
        .execute();
      await db.schema
        .createTable("quarantine_services")
        .addColumn("name", "text", (c) => c.primaryKey())
        .addColumn("ip", "text", (c) => c.notNull())
        .addColumn("proto", "text", (c) => c.notNull())
        .addColumn("port", "integer", (c) => c.notNull())
        .execute();
    },
  },
  "0004-network-vis": {
    async up(db: Kysely<unknown>) {
      await db.schema
        .createTable("net_forwards")
        .addColumn("id", "text", (c) => c.primaryKey())
        .addColumn("vm_id", "text", (c) => c.notNull())
        .addColumn("nic", "text", (c) => c.notNull())
        .addColumn("guest_port", "integer", (c) => c.notNull())
        .addColumn("listen_host", "text", (c) => c.notNull())
        .addColumn("listen_port", "integer", (c) => c.notNull())
        .addColumn("created_by", "text", (c) => c.notNull())
        .addColumn("created_at", "text", (c) => c.notNull())
        .addUniqueConstraint("net_forwards_listen", ["listen_host", "listen_port"])
        .execute();
      await db.schema
        .createTable("net_captures")
        .addColumn("id", "text", (c) => c.primaryKey())
        .addColumn("vm_id", "text", (c) => c.notNull())
        .addColumn("nic", "text", (c) => c.notNull())
        .addColumn("path", "text", (c) => c.notNull())
        .addColumn("bytes", "integer", (c) => c.notNull())
        .addColumn("packets", "integer", (c) => c.notNull())
        .addColumn("stopped_by", "text", (c) => c.notNull())
        .addColumn("created_by", "text", (c) => c.notNull())
        .addColumn("started_at", "text", (c) => c.notNull())
        .addColumn("stopped_at", "text")
        .execute();
    },
  },
  "0005-network-nat": {
    async up(db: Kysely<unknown>) {
      // Whether a network's traffic leaves through vigil's NAT uplink (docs/network.md, "## NAT"); off by default.
      await db.schema.alterTable("networks").addColumn("nat", "integer", (c) => c.notNull().defaultTo(0)).execute();
    },
  },
  "0006-cluster": {
    async up(db: Kysely<unknown>) {
      // A manager's cluster inventory (docs/cluster.md); an agent's SQLite has these tables too, empty.
      await db.schema
        .createTable("hosts")
        .addColumn("name", "text", (c) => c.primaryKey())
        .addColumn("address", "text", (c) => c.notNull())
        .addColumn("state", "text", (c) => c.notNull()) // ready | unreachable | fenced | removed
        .addColumn("cert_fingerprint", "text", (c) => c.notNull())
        .addColumn("last_seen", "text")
        .addColumn("added_at", "text", (c) => c.notNull())
        .addColumn("status", "text") // JSON HostStatus of the last heartbeat
        .execute();
      // Which host holds which VM (the VM's own row lives on that host's agent).
      await db.schema
        .createTable("placements")
        .addColumn("vm_id", "text", (c) => c.primaryKey())
        .addColumn("vm_name", "text", (c) => c.notNull().unique())
        .addColumn("host", "text", (c) => c.notNull())
        .addColumn("owner", "text", (c) => c.notNull())
        .addColumn("updated_at", "text", (c) => c.notNull())
        .execute();
      await db.schema.createIndex("placements_host").on("placements").column("host").execute();
      await db.schema
        .createTable("migrations")
        .addColumn("id", "text", (c) => c.primaryKey())
        .addColumn("vm_id", "text", (c) => c.notNull())
        .addColumn("vm_name", "text", (c) => c.notNull())
        .addColumn("source", "text", (c) => c.notNull())
        .addColumn("target", "text", (c) => c.notNull())
        .addColumn("state", "text", (c) => c.notNull()) // running | completed | failed | cancelled
        .addColumn("phase", "text", (c) => c.notNull())
        .addColumn("requested_by", "text", (c) => c.notNull())
        .addColumn("options", "text", (c) => c.notNull()) // JSON MigrationLimits
        .addColumn("progress", "text") // JSON MigrationProgress, the latest sample
        .addColumn("result", "text") // JSON MigrationResult once completed
        .addColumn("error", "text")
        .addColumn("started_at", "text", (c) => c.notNull())
        .addColumn("updated_at", "text", (c) => c.notNull())
        .addColumn("finished_at", "text")
        .execute();
      await db.schema.createIndex("migrations_state").on("migrations").columns(["state", "started_at"]).execute();
      // At most one running migration per VM, held by the database itself (two managers racing both lose but one).
      await db.schema.createIndex("migrations_one_running").on("migrations").column("vm_id").unique().where(sql.ref("state"), "=", "running").execute();
      await db.schema.createIndex("migrations_vm").on("migrations").columns(["vm_id", "started_at"]).execute();
      // Durable events: a listener reads after the last seq it saw (NOTIFY on PostgreSQL is a wake-up only).
      await db.schema
        .createTable("cluster_events")
        .addColumn("seq", "integer", (c) => c.primaryKey().autoIncrement())
        .addColumn("time", "text", (c) => c.notNull())
        .addColumn("kind", "text", (c) => c.notNull())
        .addColumn("subject", "text", (c) => c.notNull())
        .addColumn("payload", "text", (c) => c.notNull()) // JSON object
        .execute();
    },
  },
  "0006-cluster-leases": {
    async up(db: Kysely<unknown>) {
      // One lease per host (docs/cluster.md "Leases, fencing, HA"): the epoch is the fencing token, it only grows.
      await db.schema
        .createTable("host_leases")
        .addColumn("host", "text", (c) => c.primaryKey())
        .addColumn("epoch", "integer", (c) => c.notNull())
        .addColumn("holder", "text", (c) => c.notNull())
        .addColumn("expires_at", "text", (c) => c.notNull())
        .addColumn("renewed_at", "text", (c) => c.notNull())
        .execute();
    },
  },
  "0007-cluster-ha": {
    async up(db: Kysely<unknown>) {
      // `vigil vm set VM --ha` (docs/cluster.md "Fencing, wired"): kept with the VM's placement, 1 = restart elsewhere when its host is fenced.
      await db.schema.alterTable("placements").addColumn("ha", "integer", (c) => c.notNull().defaultTo(0)).execute();
    },
  },
  "0007-network-span": {
    async up(db: Kysely<unknown>) {
      // A network that spans hosts over VXLAN (docs/cluster.md "Networks across hosts"): its VNI, the other hosts'
      // underlay addresses (JSON array) and this host's slice of the range for new addresses; null: one host only.
      await db.schema.alterTable("networks").addColumn("span_vni", "integer").execute();
      await db.schema.alterTable("networks").addColumn("span_peers", "text").execute();
      await db.schema.alterTable("networks").addColumn("span_pool_first", "text").execute();
      await db.schema.alterTable("networks").addColumn("span_pool_last", "text").execute();
      // The manager's record of the cluster's networks: one VNI each, and the hosts it was made on (JSON array).
      await db.schema
        .createTable("cluster_networks")
        .addColumn("name", "text", (c) => c.primaryKey())
        .addColumn("cidr", "text", (c) => c.notNull())
        .addColumn("dhcp", "integer", (c) => c.notNull())
        .addColumn("vni", "integer", (c) => c.notNull().unique())
        .addColumn("hosts", "text", (c) => c.notNull())
        .addColumn("created_by", "text", (c) => c.notNull())
        .addColumn("created_at", "text", (c) => c.notNull())
        .execute();
    },
  },
  "0008-posture": {
    async up(db: Kysely<unknown>) {
      // Each VM's posture (docs/transience.md "Posture"): its last scan (JSON ScanRecord), when it last started
      // running (a scan older than that no longer describes its disk) and when it was last patched.
      await db.schema
        .createTable("vm_postures")
        .addColumn("vm_id", "text", (c) => c.primaryKey().references("vms.id").onDelete("cascade"))
        .addColumn("scan", "text")
        .addColumn("last_running_at", "text")
        .addColumn("last_patched_at", "text")
        .addColumn("updated_at", "text", (c) => c.notNull())
        .execute();
      // Gate policies: scope "default", "vm:<vm id>" or "label:<key>=<value>"; policy is JSON PosturePolicy.
      await db.schema
        .createTable("posture_policies")
        .addColumn("scope", "text", (c) => c.primaryKey())
        .addColumn("policy", "text", (c) => c.notNull())
        .addColumn("actor", "text", (c) => c.notNull())
        .addColumn("updated_at", "text", (c) => c.notNull())
        .execute();
    },
  },
  "0009-cluster-ha-restarts": {
    async up(db: Kysely<unknown>) {
      // The manager's durable claims on HA restarts (docs/cluster.md "Shared storage and HA restarts"): one row per
      // (VM, lost epoch), taken BEFORE the restart, so a second tick or manager never restarts the VM again.
      await db.schema
        .createTable("cluster_ha_restarts")
        .addColumn("vm_id", "text", (c) => c.notNull())
        .addColumn("vm_name", "text", (c) => c.notNull())
        .addColumn("lost_epoch", "integer", (c) => c.notNull())
        .addColumn("from_host", "text", (c) => c.notNull())
        .addColumn("to_host", "text", (c) => c.notNull())
        .addColumn("state", "text", (c) => c.notNull())
        .addColumn("error", "text")
        .addColumn("claimed_by", "text", (c) => c.notNull())
        .addColumn("claimed_at", "text", (c) => c.notNull())
        .addColumn("finished_at", "text")
        .addPrimaryKeyConstraint("cluster_ha_restarts_pk", ["vm_id", "lost_epoch"])
        .execute();
    },
  },
  "0010-recordings": {
    async up(db: Kysely<unknown>) {
      // Recordings of a VM's execution (docs/recording.md): a row per recording; what it is (QEMU build, log digest,
      // end point, disks at its start) is one JSON document, written when the recording ends. Rows go with their VM.
      await db.schema
        .createTable("recordings")
        .addColumn("id", "text", (c) => c.primaryKey())
        .addColumn("name", "text", (c) => c.notNull().unique())
        .addColumn("vm_id", "text", (c) => c.notNull().references("vms.id").onDelete("cascade"))
        .addColumn("state", "text", (c) => c.notNull())
        .addColumn("meta", "text", (c) => c.notNull())
        .addColumn("created_at", "text", (c) => c.notNull())
        .addColumn("updated_at", "text", (c) => c.notNull())
        .execute();
    },
  },
};

class InlineProvider implements MigrationProvider {
  async getMigrations(): Promise<Record<string, Migration>> {
    return migrations;
  }
}

/** Brings the schema up to date; refuses a database written by a newer vigil. */
export async function migrateToLatest(db: Kysely<unknown>): Promise<void> {
  // Written in SQLite's types; translated for PostgreSQL (src/inventory/dialect.ts), untouched on SQLite.
  if (dialectOf(db) === "postgres") db = db.withPlugin(new PostgresSchemaPlugin());
  const migrator = new Migrator({ db, provider: new InlineProvider(), migrationTableName: "schema_migrations", migrationLockTableName: "schema_migrations_lock" });
  const { error, results } = await migrator.migrateToLatest();
  if (error) {
    const failed = results?.find((r) => r.status === "Error")?.migrationName;
    throw new VigilError("VIGIL_HOST", `Cannot migrate the inventory${failed ? ` (step ${failed})` : ""}: ${String((error as Error).message ?? error)}`, { cause: error });
  }
}
