/**
 * The shapes the parts of vigil's virtual network share (docs/network.md): the switch (netns, bridges, taps,
 * addresses, DHCP) produces them, the firewall compiler and the visibility tools consume them. Kept here so no
 * part imports another's internals.
 */

/** The network namespace vigil owns on this host: every bridge, tap, dnsmasq and nft table lives inside it. */
export interface HostNetns {
  /** `ip netns` name, e.g. "vigil-3fa2c1d0". */
  name: string;
  /** /run/netns/<name>: what setns(2) (the jail's --tap) and `nsenter --net=` open. */
  path: string;
}

/** A vigil network: one bridge (one L2 segment) with one IPv4 range. */
export interface NetworkInfo {
  name: string;
  /** e.g. "10.77.0.0/24". */
  cidr: string;
  /** The bridge's own address inside the netns (first host address): DHCP server and quarantine services' home. */
  gateway: string;
  /** Bridge device name inside the netns ("vb-<name>"). */
  bridge: string;
  dhcp: boolean;
  /** Whether the network's traffic may leave through vigil's NAT uplink (docs/network.md, "## NAT"); absent: no. */
  nat?: boolean;
  createdAt: string;
  /** A network that spans hosts (docs/cluster.md "Networks across hosts (VXLAN)"); absent: this host only. */
  span?: NetworkSpan;
}

/** One L2 segment across hosts: a VXLAN device on the bridge, head-end replication to every peer. */
export interface NetworkSpan {
  /** VXLAN network identifier, 1-16777215 (the manager allocates it). */
  vni: number;
  /** The other hosts' underlay IPv4 addresses (one all-zeros FDB entry each). */
  peers: string[];
  /** This host's slice of the range: new addresses come from it only. */
  pool: { first: string; last: string };
  /** The VXLAN device inside vigil's netns, enslaved to the bridge ("vx-<name>"). */
  device: string;
}

/** One vNIC plugged into a vigil switch on this host, with everything the firewall keys on. */
export interface AttachedNic {
  vmId: string;
  vmName: string;
  /** The NIC's name in the VM spec ("net0"). */
  nic: string;
  network: string;
  bridge: string;
  /** The tap device inside the netns ("vt-" + 10 hex). */
  tap: string;
  mac: string;
  /** The IPv4 address vigil allocated for this NIC (static DHCP lease). */
  ip: string;
  /** The VM's labels (peer-label rules match them). */
  labels: Record<string, string>;
}

/** What the firewall and the visibility tools read from the switch. */
export interface SwitchView {
  netns(): HostNetns;
  networks(): Promise<NetworkInfo[]>;
  /** Every vNIC whose tap exists on this host now. */
  attached(): Promise<AttachedNic[]>;
}

/** The VM whose NIC is plugged in, as the switch needs it. */
export interface PlugVm {
  id: string;
  name: string;
  labels: Record<string, string>;
  /** The VM's jail uid/gid: the tap is created owned by them. */
  uid: number;
  gid: number;
}

/** What the VM lifecycle needs from the switch (src/network/network-service.ts implements it). */
export interface NicPlumber {
  /**
   * Allocates (first time) the NIC's address, creates its tap in vigil's netns, enslaves it to the network's
   * bridge, adds the static DHCP lease, and runs every change listener (the firewall installs the NIC's rules)
   * before it resolves: when it returns, QEMU may start. Idempotent for a tap that already exists.
   */
  attach(vm: PlugVm, nic: { name: string; network: string; mac: string }): Promise<AttachedNic & { netnsPath: string }>;
  /** Removes the NIC's tap (and, through the listeners, its rules). Idempotent. */
  detach(vmId: string, nic: string): Promise<void>;
}

/** Runs after every attach/detach (and network create/delete); the firewall registers one to recompile. */
export type SwitchListener = () => Promise<void>;
