/**
 * The switch (docs/network.md, "The switch"): vigil networks as bridges in vigil's netns, a tap per bridged NIC,
 * each NIC's address, and one dnsmasq per network serving exactly those addresses. It implements the two
 * interfaces the rest of vigil uses (types.ts): NicPlumber for the VM lifecycle (attach before QEMU starts,
 * detach when it exits) and SwitchView for the firewall and the visibility tools; `onChange` listeners (the
 * firewall) run after every change, before the change's call resolves.
 *
 * Every change runs under one lock: the netns, bridges, taps and dnsmasq command lines are derived from the
 * tables plus "which taps exist", and two changes interleaving could start a dnsmasq with a stale lease list.
 * A failed create or attach undoes what it made.
 */
import { randomUUID } from "node:crypto";
import { join } from "node:path";
import { z } from "zod";
import type { AuditLog } from "../audit/audit-log.ts";
import type { Guard, RequestContext } from "../auth/guard.ts";
import { SYSTEM_ACTOR } from "../auth/permissions.ts";
import { VigilError, messageOf, q } from "../errors.ts";
import type { Db } from "../inventory/db.ts";
import type { Logger } from "../log.ts";
import { Mutex } from "../util/mutex.ts";
import { parseOrThrow } from "../validation.ts";
import { isLive, type VmState } from "../vm/state-machine.ts";
import { bridgeName, checkNetworkName, createBridge, createTap, createVxlan, deleteLink, listLinks, repairBridge, tapName, vxlanName, vxlanPeers, type LinkInfo } from "./bridge.ts";
import { DhcpServers, type DhcpLease } from "./dhcp.ts";
import { checkPool, formatIpv4, gateway, overlaps, parseCidr, parseIpv4 } from "./ipam.ts";
import { NatUplink } from "./nat.ts";
import { deleteNetns, ensureNetns, netnsExists } from "./netns.ts";
import { NetworkRepository, type NetworkRecord, type NicAddress } from "./network-repository.ts";
import type { AttachedNic, HostNetns, NetworkInfo, NicPlumber, PlugVm, SwitchListener, SwitchView } from "./types.ts";

export const createNetworkSchema = z.strictObject({
  name: z.string(),
  cidr: z.string(),
  dhcp: z.boolean().default(true),
  nat: z.boolean().default(false),
  /** Agent-only (docs/cluster.md "Networks across hosts (VXLAN)"): set by the manager over the cluster transport. */
  span: z
    .strictObject({
      vni: z.number().int().min(1).max(16_777_215),
      peers: z.array(z.string()).min(1).max(64),
      pool: z.strictObject({ first: z.string(), last: z.string() }),
    })
    .optional(),
});
export type CreateNetworkInput = z.input<typeof createNetworkSchema>;

/** A network as `net show` prints it: the network and the NICs plugged into it now. */
export interface NetworkDetail extends NetworkInfo {
  attached: AttachedNic[];
  /** Whether this network's dnsmasq runs now (always false without DHCP). */
  dhcpRunning: boolean;
  /** A NAT network's way out (docs/network.md, "## NAT"); null for a network without NAT. */
  uplink: { vigilDevice: string; hostDevice: string; linkNet: string | null } | null;
}

export interface NetworkServiceDeps {
  db: Db;
  guard: Guard;
  audit: AuditLog;
  netns: HostNetns;
  /** A 0700 directory of the daemon for dnsmasq's pid and lease files. */
  runDir: string;
  log: Logger;
  hostName: string;
  /** An agent's underlay address (its cluster listener's IP): a spanned network's VXLAN `local`. */
  underlay?: string | undefined;
  /** Where the underlay address lives; default: the daemon's own netns (tests give a netns of their own). */
  underlayNetns?: HostNetns | undefined;
}

const MAC = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/;
const info = (n: NetworkRecord): NetworkInfo => ({ name: n.name, cidr: n.cidr, gateway: n.gateway, bridge: n.bridge, dhcp: n.dhcp, nat: n.nat, createdAt: n.createdAt, ...(n.span ? { span: n.span } : {}) });

export class NetworkService implements NicPlumber, SwitchView {
  readonly repo: NetworkRepository;
  private readonly dhcp: DhcpServers;
  /** The NAT uplink: exists exactly while a network has `nat` (synced under the lock after every change). */
  readonly nat: NatUplink;
  private readonly lock = new Mutex();
  private readonly listeners = new Set<SwitchListener>();

  constructor(private readonly d: NetworkServiceDeps) {
    this.repo = new NetworkRepository(d.db);
    this.dhcp = new DhcpServers(d.netns, join(d.runDir, "dhcp"));
    this.nat = new NatUplink(d.netns, join(d.runDir, "nat", "uplink.json"));
  }

  netns(): HostNetns {
    return this.d.netns;
  }

  async networks(): Promise<NetworkInfo[]> {
    return (await this.repo.list()).map(info);
  }

  /** Registers a listener run after every attach, detach, create and delete; returns its removal. */
  onChange(listener: SwitchListener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** Syncs the NAT uplink with `networks`; a change to the daemon's netns (the host's) is audited `net.uplink`. */
  private async syncNat(networks: readonly NetworkInfo[]): Promise<void> {
    const change = await this.nat.sync(networks);
    if (!change) return;
    this.d.log.info({ ...change }, `NAT uplink ${change.change}`);
    await this.d.audit.append({ actor: SYSTEM_ACTOR.name, action: "net.uplink", target: { kind: "host", name: this.d.hostName }, result: "ok", details: { ...change } });
  }

  private async notify(): Promise<void> {
    for (const l of this.listeners) await l();
  }

  private async links(): Promise<LinkInfo[]> {
    return netnsExists(this.d.netns) ? listLinks(this.d.netns) : [];
  }

  private nicOf(a: NicAddress, bridge: string): AttachedNic {
    return { vmId: a.vmId, vmName: a.vmName, nic: a.nic, network: a.network, bridge, tap: tapName(a.vmId, a.nic), mac: a.mac, ip: a.ip, labels: a.labels };
  }

  private async attachedNow(networkId?: string): Promise<AttachedNic[]> {
    const links = new Map((await this.links()).map((l) => [l.name, l]));
    const nets = new Map((await this.repo.list()).map((n) => [n.id, n]));
    return (await this.repo.addresses(networkId)).flatMap((a) => {
      const tap = links.get(tapName(a.vmId, a.nic));
      const net = nets.get(a.networkId);
      return tap && net && tap.master === net.bridge ? [this.nicOf(a, net.bridge)] : [];
    });
  }

  attached(): Promise<AttachedNic[]> {
    return this.attachedNow();
  }

  /** (Re)starts the network's dnsmasq with the leases of the NICs plugged into it now. */
  private async refreshDhcp(net: NetworkRecord): Promise<void> {
    if (!net.dhcp) return;
    const leases: DhcpLease[] = (await this.attachedNow(net.id)).map((n) => ({ mac: n.mac, ip: n.ip }));
    await this.dhcp.start({ name: net.name, bridge: net.bridge, cidr: parseCidr(net.cidr), router: net.nat ? net.gateway : undefined }, leases);
  }

  private async network(name: string): Promise<NetworkRecord> {
    const net = await this.repo.find(name);
    if (!net) throw new VigilError("VIGIL_NOT_FOUND", `Network ${q(name)} does not exist`);
    return net;
  }

  /** The netns and the network's bridge exist (rebuilt if someone deleted them since the daemon started). */
  private async ensureBridge(net: NetworkRecord): Promise<void> {
    const gw = `${net.gateway}/${parseCidr(net.cidr).prefix}`;
    if (!netnsExists(this.d.netns)) {
      await ensureNetns(this.d.netns);
      await this.syncNat(await this.networks());
    }
    if ((await listLinks(this.d.netns)).some((l) => l.name === net.bridge)) await repairBridge(this.d.netns, net.bridge, gw);
    else await createBridge(this.d.netns, net.bridge, gw);
    await this.ensureVxlan(net);
  }

  /** A spanned network's VXLAN device is on its bridge, up, with exactly its peers; re-created otherwise. */
  private async ensureVxlan(net: NetworkRecord): Promise<void> {
    if (!net.span) return;
    const link = (await listLinks(this.d.netns)).find((l) => l.name === net.span!.device);
    if (link && link.kind === "vxlan" && link.master === net.bridge && link.up && (await vxlanPeers(this.d.netns, link.name)).join(",") === [...net.span.peers].sort().join(",")) return;
    await createVxlan(this.d.netns, net.span.device, { vni: net.span.vni, local: this.underlay(net.name), peers: net.span.peers, bridge: net.bridge, underlay: this.d.underlayNetns });
  }

  private underlay(network: string): string {
    if (this.d.underlay === undefined || parseIpv4(this.d.underlay) === undefined) {
      throw new VigilError("VIGIL_CONFLICT", `Network ${q(network)} spans hosts, and this daemon has no IPv4 cluster address (only an agent, \`vigil agent --listen IP:PORT\`, has one)`, { field: "span" });
    }
    return this.d.underlay;
  }

  // ---- NicPlumber -------------------------------------------------------------------------------------------

  attach(vm: PlugVm, nic: { name: string; network: string; mac: string }): Promise<AttachedNic & { netnsPath: string }> {
    return this.lock.run(async () => {
      const mac = nic.mac.toLowerCase();
      if (!MAC.test(mac)) throw new VigilError("VIGIL_BAD_REQUEST", `Cannot attach NIC ${q(nic.name)} of VM ${q(vm.name)}: invalid MAC ${q(nic.mac)}`, { field: "mac" });
      const net = await this.repo.find(nic.network);
      if (!net) throw new VigilError("VIGIL_NOT_FOUND", `Cannot attach NIC ${q(nic.name)} of VM ${q(vm.name)}: network ${q(nic.network)} does not exist`, { field: "network" });
      const ip = await this.repo.allocate(net, vm.id, nic.name, mac);
      const tap = tapName(vm.id, nic.name);
      await this.ensureBridge(net);
      const existing = (await this.links()).find((l) => l.name === tap);
      await createTap(this.d.netns, tap, net.bridge, vm.uid, vm.gid, existing);
      try {
        await this.refreshDhcp(net);
        await this.notify();
      } catch (err) {
        // Fail closed: no tap without its lease and its firewall rules.
        await deleteLink(this.d.netns, tap).catch(() => undefined);
        await this.refreshDhcp(net).catch(() => undefined);
        await this.notify().catch((e: unknown) => this.d.log.warn({ err: messageOf(e) }, "switch listener failed after an undone attach"));
        throw err;
      }
      this.d.log.info({ vm: vm.name, nic: nic.name, network: net.name, tap, ip }, "NIC attached");
      if (!existing) await this.d.audit.append({ actor: SYSTEM_ACTOR.name, action: "net.attach", target: { kind: "vm", id: vm.id, name: vm.name }, result: "ok", details: { nic: nic.name, network: net.name, tap, mac, ip } });
      return { vmId: vm.id, vmName: vm.name, nic: nic.name, network: net.name, bridge: net.bridge, tap, mac, ip, labels: vm.labels, netnsPath: this.d.netns.path };
    });
  }

  detach(vmId: string, nic: string): Promise<void> {
    return this.lock.run(async () => {
      const tap = tapName(vmId, nic);
      const link = (await this.links()).find((l) => l.name === tap);
      if (!link) return;
      await deleteLink(this.d.netns, tap);
      const net = (await this.repo.list()).find((n) => n.bridge === link.master);
      if (net) await this.refreshDhcp(net);
      await this.notify();
      await this.d.audit.append({ actor: SYSTEM_ACTOR.name, action: "net.detach", target: { kind: "vm", id: vmId }, result: "ok", details: { nic, tap, ...(net ? { network: net.name } : {}) } });
    });
  }

  // ---- networks -----------------------------------------------------------------------------------------------

  /** `vigil net create`: the bridge (with the gateway address), its dnsmasq, its row; all or nothing. */
  create(ctx: RequestContext, input: unknown, via: { cluster?: boolean } = {}): Promise<NetworkInfo> {
    const name = typeof (input as { name?: unknown } | null)?.name === "string" ? (input as { name: string }).name : undefined;
    return this.d.guard.run(ctx, { action: "net.create", permission: "network.manage", target: { kind: "network", name }, details: { input } }, () =>
      this.lock.run(async () => {
        const req = parseOrThrow(createNetworkSchema, input, "network");
        checkNetworkName(req.name);
        const cidr = parseCidr(req.cidr);
        let span: NetworkRecord["span"];
        if (req.span) {
          if (!via.cluster) throw new VigilError("VIGIL_FORBIDDEN", "Cannot create a network with span here: only the cluster manager sets span (POST /v1/networks on the manager)", { field: "span" });
          if (req.nat) throw new VigilError("VIGIL_BAD_REQUEST", "A network that spans hosts cannot have nat (each host would be a way out of one segment)", { field: "nat" });
          const local = this.underlay(req.name);
          const peers = [...new Set(req.span.peers)];
          peers.forEach((p, i) => {
            if (parseIpv4(p) === undefined) throw new VigilError("VIGIL_BAD_REQUEST", `Invalid span.peers.${i} ${q(p)}: an IPv4 underlay address`, { field: `span.peers.${i}` });
            if (p === local) throw new VigilError("VIGIL_BAD_REQUEST", `Invalid span.peers.${i} ${q(p)}: that is this host's own underlay address`, { field: `span.peers.${i}` });
          });
          checkPool(cidr, req.span.pool);
          if ((await this.repo.list()).some((n) => n.span?.vni === req.span!.vni)) throw new VigilError("VIGIL_CONFLICT", `Cannot create network ${q(req.name)}: VNI ${req.span.vni} is another network's here`, { field: "span.vni" });
          span = { vni: req.span.vni, peers, pool: req.span.pool, device: vxlanName(req.name) };
        }
        const all = await this.repo.list();
        if (all.some((n) => n.name === req.name)) throw new VigilError("VIGIL_CONFLICT", `Cannot create network ${q(req.name)}: a network with that name exists`, { field: "name" });
        const clash = all.find((n) => overlaps(parseCidr(n.cidr), cidr));
        if (clash) throw new VigilError("VIGIL_CONFLICT", `Cannot create network ${q(req.name)}: cidr ${cidr.text} overlaps network ${q(clash.name)} (${clash.cidr})`, { field: "cidr" });
        const net: NetworkRecord = { id: randomUUID(), name: req.name, cidr: cidr.text, gateway: formatIpv4(gateway(cidr)), bridge: bridgeName(req.name), dhcp: req.dhcp, nat: req.nat, createdAt: new Date().toISOString(), ...(span ? { span } : {}) };
        const hadNetns = netnsExists(this.d.netns);
        let bridgeMade = false;
        try {
          await ensureNetns(this.d.netns);
          await createBridge(this.d.netns, net.bridge, `${net.gateway}/${cidr.prefix}`);
          bridgeMade = true;
          if (net.span) await createVxlan(this.d.netns, net.span.device, { vni: net.span.vni, local: this.underlay(net.name), peers: net.span.peers, bridge: net.bridge, underlay: this.d.underlayNetns });
          if (net.dhcp) await this.dhcp.start({ name: net.name, bridge: net.bridge, cidr, router: net.nat ? net.gateway : undefined }, []);
          if (net.nat) await this.syncNat([...all.map(info), info(net)]);
          await this.repo.insert(net);
        } catch (err) {
          if (net.nat) await this.syncNat(all.map(info)).catch((e: unknown) => this.d.log.warn({ err: messageOf(e) }, "NAT uplink not restored after a failed create"));
          await this.dhcp.stop(net.name).catch(() => undefined);
          if (net.span) await deleteLink(this.d.netns, net.span.device).catch(() => undefined);
          if (bridgeMade) await deleteLink(this.d.netns, net.bridge).catch(() => undefined);
          if (!hadNetns && all.length === 0) await deleteNetns(this.d.netns).catch(() => undefined);
          throw err;
        }
        await this.notify();
        return info(net);
      }),
    );
  }

  async list(ctx: RequestContext): Promise<NetworkInfo[]> {
    await this.d.guard.authorize(ctx, { action: "net.list", permission: "network.read", target: { kind: "network" }, readOnly: true });
    return this.networks();
  }

  async get(ctx: RequestContext, name: string): Promise<NetworkDetail> {
    await this.d.guard.authorize(ctx, { action: "net.show", permission: "network.read", target: { kind: "network", name }, readOnly: true });
    const net = await this.network(name);
    const uplink = net.nat ? { vigilDevice: this.nat.names.vigil, hostDevice: this.nat.names.host, linkNet: this.nat.linkNet()?.cidr ?? null } : null;
    return { ...info(net), attached: await this.attachedNow(net.id), dhcpRunning: this.dhcp.pid(net.name) !== undefined, uplink };
  }

  /** `vigil net delete`: refused while any VM's spec names the network; the last network takes the netns along. */
  delete(ctx: RequestContext, name: string): Promise<void> {
    return this.d.guard.run(ctx, { action: "net.delete", permission: "network.manage", target: { kind: "network", name } }, () =>
      this.lock.run(async () => {
        const net = await this.network(name);
        const users = await this.repo.vmsNaming(name);
        if (users.length > 0) throw new VigilError("VIGIL_CONFLICT", `Cannot delete network ${q(name)}: VMs have a NIC on it (${users.join(", ")})`);
        // The NAT uplink first (the last NAT network takes it along): a failure here leaves the network as it was.
        if (net.nat) await this.syncNat((await this.repo.list()).filter((n) => n.id !== net.id).map(info));
        await this.dhcp.stop(net.name);
        if (netnsExists(this.d.netns)) {
          for (const l of await listLinks(this.d.netns)) if (l.master === net.bridge) await deleteLink(this.d.netns, l.name);
          if (net.span) await deleteLink(this.d.netns, net.span.device);
          await deleteLink(this.d.netns, net.bridge);
        }
        await this.repo.delete(net.id);
        if ((await this.repo.list()).length === 0) await deleteNetns(this.d.netns);
        await this.notify();
      }),
    );
  }

  /**
   * At daemon start: the netns, every network's bridge and dnsmasq back as the tables say; taps of VMs that are
   * not live (or have no address any more) removed. With no network, a leftover netns is deleted.
   */
  reconcile(): Promise<{ networks: number; tapsRemoved: string[]; dhcpRestarted: string[] }> {
    return this.lock.run(async () => {
      const nets = await this.repo.list();
      if (nets.length === 0) {
        await this.syncNat([]);
        await deleteNetns(this.d.netns);
        return { networks: 0, tapsRemoved: [], dhcpRestarted: [] };
      }
      await ensureNetns(this.d.netns);
      for (const n of nets) {
        try {
          await this.ensureBridge(n);
        } catch (err) {
          // A spanned network whose VXLAN device cannot be made (no cluster address: started as `vigil serve`)
          // stays local-only rather than keeping the daemon from starting; its attach retries and fails closed.
          if (!n.span) throw err;
          this.d.log.warn({ network: n.name, err: messageOf(err) }, "the network's VXLAN device is missing: it reaches no other host");
        }
      }
      await this.syncNat(nets.map(info));
      const states = await this.repo.vmStates();
      const live = new Set((await this.repo.addresses()).filter((a) => states.has(a.vmId) && isLive(a.vmState as VmState)).map((a) => tapName(a.vmId, a.nic)));
      const tapsRemoved: string[] = [];
      for (const l of await listLinks(this.d.netns)) {
        if (l.name.startsWith("vt-") && l.kind === "tun" && !live.has(l.name)) {
          await deleteLink(this.d.netns, l.name);
          tapsRemoved.push(l.name);
        }
      }
      const dhcpRestarted: string[] = [];
      for (const n of nets) {
        if (!n.dhcp) continue;
        if (this.dhcp.pid(n.name) === undefined || tapsRemoved.length > 0) dhcpRestarted.push(n.name);
        else continue;
        await this.refreshDhcp(n);
      }
      if (tapsRemoved.length > 0 || dhcpRestarted.length > 0) {
        await this.d.audit.append({ actor: SYSTEM_ACTOR.name, action: "net.reconcile", target: { kind: "host", name: this.d.hostName }, result: "ok", details: { tapsRemoved, dhcpRestarted } });
      }
      await this.notify();
      return { networks: nets.length, tapsRemoved, dhcpRestarted };
    });
  }
}
