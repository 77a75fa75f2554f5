/** `vigil net`: networks of the switch (create, list, show with the NICs plugged in, delete). */
import type { Command } from "commander";
import { call } from "../client.ts";
import { printJson, printTable } from "../output.ts";
import { enc } from "./common.ts";

interface Network {
  name: string;
  cidr: string;
  gateway: string;
  bridge: string;
  dhcp: boolean;
  nat: boolean;
  createdAt: string;
}

interface NetworkDetail extends Network {
  dhcpRunning: boolean;
  uplink: { vigilDevice: string; hostDevice: string; linkNet: string | null } | null;
  attached: Array<{ vmName: string; nic: string; ip: string; mac: string; tap: string }>;
}

const NETWORK_COLUMNS: Array<[string, string]> = [
  ["name", "NAME"],
  ["cidr", "CIDR"],
  ["gateway", "GATEWAY"],
  ["bridge", "BRIDGE"],
  ["dhcpText", "DHCP"],
  ["natText", "NAT"],
];

/** Adds `net` and its subcommands. */
export function registerNet(program: Command): void {
  const net = program.command("net").description("Networks: bridges in vigil's network namespace, with addresses and DHCP for VMs' NICs");
  net
    .command("create <name>")
    .description("Create a network (a bridge holding the range's first address; DHCP serves each NIC its address)")
    .requiredOption("--cidr <cidr>", "the IPv4 range, /16 to /29, e.g. 10.77.0.0/24")
    .option("--no-dhcp", "no DHCP server: guests configure their address themselves")
    .option("--nat", "let the network's traffic out through vigil's NAT uplink (changes the host: docs/network.md, NAT)")
    .option("--json", "machine-readable output")
    .action(async (name: string, o: { cidr: string; dhcp: boolean; nat?: boolean; json?: boolean }) => {
      const n = await call<Network>("POST", "/v1/networks", { name, cidr: o.cidr, dhcp: o.dhcp, nat: o.nat === true });
      if (o.json) return printJson(n);
      process.stdout.write(`Network ${n.name} created: ${n.cidr}, gateway ${n.gateway}, bridge ${n.bridge}${n.dhcp ? ", DHCP on" : ", no DHCP"}${n.nat ? ", NAT to the outside" : ""}\n`);
    });
  net
    .command("list")
    .description("List networks")
    .option("--json", "machine-readable output")
    .action(async (o: { json?: boolean }) => {
      const { networks } = await call<{ networks: Network[] }>("GET", "/v1/networks");
      if (o.json) return printJson(networks);
      printTable(networks.map((n) => ({ ...n, dhcpText: n.dhcp ? "yes" : "no", natText: n.nat ? "yes" : "no" })), NETWORK_COLUMNS);
    });
  net
    .command("show <name>")
    .description("A network and the NICs plugged into it now (VM, NIC, IP, MAC, tap)")
    .option("--json", "machine-readable output")
    .action(async (name: string, o: { json?: boolean }) => {
      const n = await call<NetworkDetail>("GET", `/v1/networks/${enc(name)}`);
      if (o.json) return printJson(n);
      process.stdout.write(`Network ${n.name}: ${n.cidr}, gateway ${n.gateway}, bridge ${n.bridge}, DHCP ${n.dhcp ? (n.dhcpRunning ? "running" : "NOT RUNNING") : "off"}, NAT ${n.uplink ? `via ${n.uplink.vigilDevice} <-> ${n.uplink.hostDevice} (${n.uplink.linkNet ?? "link net not set up"})` : "off"}\n`);
      if (n.attached.length === 0) return void process.stdout.write("No NIC is plugged in.\n");
      printTable(n.attached, [
        ["vmName", "VM"],
        ["nic", "NIC"],
        ["ip", "IP"],
        ["mac", "MAC"],
        ["tap", "TAP"],
      ]);
    });
  net
    .command("delete <name>")
    .description("Delete a network no VM has a NIC on (the last one takes vigil's network namespace along)")
    .action(async (name: string) => {
      await call("DELETE", `/v1/networks/${enc(name)}`);
      process.stdout.write(`Network ${name} deleted\n`);
    });
}
