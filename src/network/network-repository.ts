/**
 * The switch's tables (migration 0004-network): networks, and the address each bridged NIC was given. An
 * address is allocated in one transaction with the lowest free one (the unique (network, ip) constraint makes two
 * allocations of one address impossible) and lives as long as the VM's row (ON DELETE CASCADE).
 */
import type { Db } from "../inventory/db.ts";
import type { NetworksTable } from "../inventory/schema.ts";
import { vxlanName } from "./bridge.ts";
import { allocate, parseCidr } from "./ipam.ts";
import type { NetworkInfo } from "./types.ts";

export interface NetworkRecord extends NetworkInfo {
  id: string;
  nat: boolean;
}

/** An allocated address, with what the switch shows about its VM. */
export interface NicAddress {
  vmId: string;
  vmName: string;
  vmState: string;
  labels: Record<string, string>;
  nic: string;
  networkId: string;
  network: string;
  ip: string;
  mac: string;
}

function toRecord(r: NetworksTable): NetworkRecord {
  const rec: NetworkRecord = { id: r.id, name: r.name, cidr: r.cidr, gateway: r.gateway, bridge: r.bridge, dhcp: r.dhcp === 1, nat: r.nat === 1, createdAt: r.created_at };
  if (r.span_vni !== null && r.span_pool_first !== null && r.span_pool_last !== null) {
    rec.span = { vni: r.span_vni, peers: JSON.parse(r.span_peers ?? "[]") as string[], pool: { first: r.span_pool_first, last: r.span_pool_last }, device: vxlanName(r.name) };
  }
  return rec;
}

function parseLabels(text: string): Record<string, string> {
  try {
    const v = JSON.parse(text) as unknown;
    return v && typeof v === "object" && !Array.isArray(v) ? (v as Record<string, string>) : {};
  } catch {
    return {};
  }
}

export class NetworkRepository {
  constructor(private readonly db: Db) {}

  async list(): Promise<NetworkRecord[]> {
    return (await this.db.selectFrom("networks").selectAll().orderBy("name").execute()).map(toRecord);
  }

  async find(name: string): Promise<NetworkRecord | undefined> {
    const row = await this.db.selectFrom("networks").selectAll().where("name", "=", name).executeTakeFirst();
    return row ? toRecord(row) : undefined;
  }

  async insert(n: NetworkRecord): Promise<void> {
    await this.db.insertInto("networks").values({ id: n.id, name: n.name, cidr: n.cidr, gateway: n.gateway, bridge: n.bridge, dhcp: n.dhcp ? 1 : 0, nat: n.nat ? 1 : 0, created_at: n.createdAt, ...(n.span ? { span_vni: n.span.vni, span_peers: JSON.stringify(n.span.peers), span_pool_first: n.span.pool.first, span_pool_last: n.span.pool.last } : {}) }).execute();
  }

  /** Deletes the network and every address on it. */
  async delete(id: string): Promise<void> {
    await this.db.transaction().execute(async (trx) => {
      await trx.deleteFrom("nic_addresses").where("network_id", "=", id).execute();
      await trx.deleteFrom("networks").where("id", "=", id).execute();
    });
  }

  /**
   * The NIC's address on `network`: the one it has (its MAC brought up to date), or the lowest free one. A NIC
   * that had an address on another network gives it up.
   */
  async allocate(network: NetworkRecord, vmId: string, nic: string, mac: string): Promise<string> {
    const cidr = parseCidr(network.cidr);
    return this.db.transaction().execute(async (trx) => {
      const had = await trx.selectFrom("nic_addresses").selectAll().where("vm_id", "=", vmId).where("nic", "=", nic).executeTakeFirst();
      if (had && had.network_id === network.id) {
        if (had.mac !== mac) await trx.updateTable("nic_addresses").set({ mac }).where("vm_id", "=", vmId).where("nic", "=", nic).execute();
        return had.ip;
      }
      if (had) await trx.deleteFrom("nic_addresses").where("vm_id", "=", vmId).where("nic", "=", nic).execute();
      const used = (await trx.selectFrom("nic_addresses").select("ip").where("network_id", "=", network.id).execute()).map((r) => r.ip);
      // A spanned network: new addresses from this host's pool only (a migrated VM's address, from another
      // host's pool, arrives with its row and is kept above).
      const ip = allocate(cidr, used, network.name, network.span?.pool);
      await trx.insertInto("nic_addresses").values({ vm_id: vmId, nic, network_id: network.id, ip, mac }).execute();
      return ip;
    });
  }

  /** Allocated addresses with their VM, optionally of one network. */
  async addresses(networkId?: string): Promise<NicAddress[]> {
    let query = this.db
      .selectFrom("nic_addresses")
      .innerJoin("networks", "networks.id", "nic_addresses.network_id")
      .innerJoin("vms", "vms.id", "nic_addresses.vm_id")
      .select(["nic_addresses.vm_id", "nic_addresses.nic", "nic_addresses.network_id", "nic_addresses.ip", "nic_addresses.mac", "networks.name as network", "vms.name as vm_name", "vms.state as vm_state", "vms.labels"]);
    if (networkId !== undefined) query = query.where("nic_addresses.network_id", "=", networkId);
    const rows = await query.orderBy("nic_addresses.ip").execute();
    return rows.map((r) => ({ vmId: r.vm_id, vmName: r.vm_name, vmState: r.vm_state, labels: parseLabels(r.labels), nic: r.nic, networkId: r.network_id, network: r.network, ip: r.ip, mac: r.mac }));
  }

  /** Names of the VMs whose spec has a NIC on `network` (nics[].network), whatever their state. */
  async vmsNaming(network: string): Promise<string[]> {
    const rows = await this.db.selectFrom("vms").select(["name", "spec"]).orderBy("name").execute();
    return rows
      .filter((r) => {
        try {
          const nics = (JSON.parse(r.spec) as { nics?: unknown }).nics;
          return Array.isArray(nics) && nics.some((n) => n !== null && typeof n === "object" && (n as { network?: unknown }).network === network);
        } catch {
          return false;
        }
      })
      .map((r) => r.name);
  }

  /** The state of every VM by id (reconcile keeps the taps of live VMs only). */
  async vmStates(): Promise<Map<string, string>> {
    const rows = await this.db.selectFrom("vms").select(["id", "state"]).execute();
    return new Map(rows.map((r) => [r.id, r.state]));
  }
}
