-- index audit_log_target
CREATE INDEX "audit_log_target" on "audit_log" ("target_id", "seq");
-- index data_files_vm
CREATE INDEX "data_files_vm" on "data_files" ("vm_id");
-- index generations_vm
CREATE INDEX "generations_vm" on "generations" ("vm_id", "generation");
-- index imported_bundles_manifest
CREATE INDEX "imported_bundles_manifest" on "imported_bundles" ("manifest_sha256");
-- index migrations_one_running
CREATE UNIQUE INDEX "migrations_one_running" on "migrations" ("vm_id") where "state" = 'running';
-- index migrations_state
CREATE INDEX "migrations_state" on "migrations" ("state", "started_at");
-- index migrations_vm
CREATE INDEX "migrations_vm" on "migrations" ("vm_id", "started_at");
-- index placements_host
CREATE INDEX "placements_host" on "placements" ("host");
-- table audit_checkpoints
CREATE TABLE "audit_checkpoints" ("seq" integer primary key, "hash" text not null, "time" text not null, "key_id" text not null, "signature" text not null, "root_hash" text);
-- table audit_log
CREATE TABLE "audit_log" ("seq" integer primary key, "id" text not null unique, "time" text not null, "actor" text not null, "action" text not null, "target_kind" text not null, "target_id" text, "target_name" text, "result" text not null, "host" text not null, "request_id" text, "details" text not null, "prev_hash" text not null, "hash" text not null);
-- table audit_tree
CREATE TABLE "audit_tree" ("level" integer not null, "idx" integer not null, "hash" text not null, constraint "audit_tree_pk" primary key ("level", "idx"));
-- table cluster_events
CREATE TABLE "cluster_events" ("seq" integer primary key autoincrement, "time" text not null, "kind" text not null, "subject" text not null, "payload" text not null);
-- table cluster_ha_restarts
CREATE TABLE "cluster_ha_restarts" ("vm_id" text not null, "vm_name" text not null, "lost_epoch" integer not null, "from_host" text not null, "to_host" text not null, "state" text not null, "error" text, "claimed_by" text not null, "claimed_at" text not null, "finished_at" text, constraint "cluster_ha_restarts_pk" primary key ("vm_id", "lost_epoch"));
-- table cluster_networks
CREATE TABLE "cluster_networks" ("name" text primary key, "cidr" text not null, "dhcp" integer not null, "vni" integer not null unique, "hosts" text not null, "created_by" text not null, "created_at" text not null);
-- table data_files
CREATE TABLE "data_files" ("id" text primary key, "vm_id" text not null, "host" text not null, "path" text not null, "purpose" text not null, "size" integer, "sha256" text, "created_at" text not null, "removed_at" text, "removed_how" text, "dev" text, "ino" text, "origin" text default 'vigil' not null);
-- table fw_policies
CREATE TABLE "fw_policies" ("vm_id" text not null references "vms" ("id") on delete cascade, "version" integer not null, "policy" text not null, "actor" text not null, "created_at" text not null, constraint "fw_policies_pk" primary key ("vm_id", "version"));
-- table generations
CREATE TABLE "generations" ("id" integer primary key autoincrement, "vm_id" text not null, "generation" integer not null, "parent_generation" integer, "vmgenid" text not null, "reason" text not null, "snapshot" text, "source_vm_id" text, "reseed" text, "created_by" text not null, "created_at" text not null);
-- table group_members
CREATE TABLE "group_members" ("group_name" text not null references "groups" ("name"), "user_id" text not null references "users" ("id"), constraint "group_members_pk" primary key ("group_name", "user_id"));
-- table groups
CREATE TABLE "groups" ("name" text primary key, "created_at" text not null);
-- table host_leases
CREATE TABLE "host_leases" ("host" text primary key, "epoch" integer not null, "holder" text not null, "expires_at" text not null, "renewed_at" text not null);
-- table hosts
CREATE TABLE "hosts" ("name" text primary key, "address" text not null, "state" text not null, "cert_fingerprint" text not null, "last_seen" text, "added_at" text not null, "status" text);
-- table images
CREATE TABLE "images" ("name" text primary key, "disk" text not null, "source_format" text not null, "size" integer not null, "virtual_size" integer not null, "sha256" text not null, "description" text not null, "source" text not null, "created_by" text not null, "created_at" text not null);
-- table imported_bundles
CREATE TABLE "imported_bundles" ("id" integer primary key autoincrement, "manifest_sha256" text not null, "signer_key_id" text not null, "source_vm_id" text not null, "vm_id" text not null, "imported_by" text not null, "imported_at" text not null, "replay" integer not null);
-- table intents
CREATE TABLE "intents" ("id" text primary key, "vm_id" text not null, "kind" text not null, "path" text not null, "data" text default '{}' not null, "created_at" text not null);
-- table jail_uid_counter
CREATE TABLE "jail_uid_counter" ("id" integer primary key, "next" integer not null);
-- table jail_uids
CREATE TABLE "jail_uids" ("vm_id" text primary key, "uid" integer not null unique);
-- table kv
CREATE TABLE "kv" ("key" text primary key, "value" text not null);
-- table migrations
CREATE TABLE "migrations" ("id" text primary key, "vm_id" text not null, "vm_name" text not null, "source" text not null, "target" text not null, "state" text not null, "phase" text not null, "requested_by" text not null, "options" text not null, "progress" text, "result" text, "error" text, "started_at" text not null, "updated_at" text not null, "finished_at" text);
-- table net_captures
CREATE TABLE "net_captures" ("id" text primary key, "vm_id" text not null, "nic" text not null, "path" text not null, "bytes" integer not null, "packets" integer not null, "stopped_by" text not null, "created_by" text not null, "started_at" text not null, "stopped_at" text);
-- table net_forwards
CREATE TABLE "net_forwards" ("id" text primary key, "vm_id" text not null, "nic" text not null, "guest_port" integer not null, "listen_host" text not null, "listen_port" integer not null, "created_by" text not null, "created_at" text not null, constraint "net_forwards_listen" unique ("listen_host", "listen_port"));
-- table networks
CREATE TABLE "networks" ("id" text primary key, "name" text not null unique, "cidr" text not null, "gateway" text not null, "bridge" text not null, "dhcp" integer not null, "created_at" text not null, "nat" integer default 0 not null, "span_vni" integer, "span_peers" text, "span_pool_first" text, "span_pool_last" text);
-- table nic_addresses
CREATE TABLE "nic_addresses" ("vm_id" text not null references "vms" ("id") on delete cascade, "nic" text not null, "network_id" text not null references "networks" ("id"), "ip" text not null, "mac" text not null, constraint "nic_addresses_ip" unique ("network_id", "ip"), constraint "nic_addresses_nic" unique ("vm_id", "nic"));
-- table placements
CREATE TABLE "placements" ("vm_id" text primary key, "vm_name" text not null unique, "host" text not null, "owner" text not null, "updated_at" text not null, "ha" integer default 0 not null);
-- table posture_policies
CREATE TABLE "posture_policies" ("scope" text primary key, "policy" text not null, "actor" text not null, "updated_at" text not null);
-- table quarantine
CREATE TABLE "quarantine" ("vm_id" text primary key references "vms" ("id") on delete cascade, "since" text not null, "reason" text not null, "actor" text not null);
-- table quarantine_services
CREATE TABLE "quarantine_services" ("name" text primary key, "ip" text not null, "proto" text not null, "port" integer not null);
-- table recordings
CREATE TABLE "recordings" ("id" text primary key, "name" text not null unique, "vm_id" text not null references "vms" ("id") on delete cascade, "state" text not null, "meta" text not null, "created_at" text not null, "updated_at" text not null);
-- table schema_migrations
CREATE TABLE "schema_migrations" ("name" varchar(255) not null primary key, "timestamp" varchar(255) not null);
-- table schema_migrations_lock
CREATE TABLE "schema_migrations_lock" ("id" varchar(255) not null primary key, "is_locked" integer default 0 not null);
-- table snapshots
CREATE TABLE "snapshots" ("id" text primary key, "vm_id" text not null, "name" text not null, "parent_id" text, "description" text default '' not null, "kind" text not null, "spec" text not null, "generation" integer not null, "vmgenid" text not null, "vm_state_size" integer default 0 not null, "state_sha256" text, "disk_bytes" integer default 0 not null, "floor" text default '{}' not null, "guest_facts" text default '{}' not null, "single_use" integer default 0 not null, "resumed_count" integer default 0 not null, "created_by" text not null, "created_at" text not null, constraint "snapshots_vm_name" unique ("vm_id", "name"));
-- table tokens
CREATE TABLE "tokens" ("id" text primary key, "user_id" text not null references "users" ("id"), "name" text not null, "hash" text not null unique, "created_at" text not null, "expires_at" text, "last_used_at" text, "revoked" integer default 0 not null, "parent_id" text);
-- table trusted_keys
CREATE TABLE "trusted_keys" ("key_id" text primary key, "public_key" text not null, "name" text not null, "added_by" text not null, "added_at" text not null);
-- table users
CREATE TABLE "users" ("id" text primary key, "name" text not null unique, "roles" text not null, "introspect" integer default 0 not null, "disabled" integer default 0 not null, "created_at" text not null, "created_by" text not null, "quotas" text);
-- table vm_locations
CREATE TABLE "vm_locations" ("id" integer primary key autoincrement, "vm_id" text not null, "host" text not null, "path" text not null, "since" text not null, "until" text);
-- table vm_postures
CREATE TABLE "vm_postures" ("vm_id" text primary key references "vms" ("id") on delete cascade, "scan" text, "last_running_at" text, "last_patched_at" text, "updated_at" text not null);
-- table vms
CREATE TABLE "vms" ("id" text primary key, "name" text not null unique, "spec" text not null, "state" text not null, "host" text not null, "accelerator" text, "vmgenid" text not null, "generation" integer default 1 not null, "pid" integer, "owner" text not null, "approver" text, "purpose" text, "expires_at" text, "labels" text default '{}' not null, "lineage" text default '{}' not null, "is_template" integer default 0 not null, "created_by" text not null, "created_at" text not null, "updated_at" text not null, "state_changed_at" text not null, "current_snapshot_id" text, "resume_snapshot_id" text, "base_vm_id" text, "vtime_ns" text default '' not null, "security_floor" text default '{}' not null);
-- table vtime_counters
CREATE TABLE "vtime_counters" ("ns" text not null, "name" text not null, "value" integer not null, "last_rid" text, "updated_at" text not null, constraint "vtime_counters_pk" primary key ("ns", "name"));
-- table vtime_records
CREATE TABLE "vtime_records" ("ns" text not null, "stream" text not null, "seq" integer not null, "data" text not null, "rid" text, "time" text not null, constraint "vtime_records_pk" primary key ("ns", "stream", "seq"));
