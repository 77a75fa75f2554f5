/**
 * `vigil fw` (a VM's firewall policy), `vigil vm quarantine|release`, `vigil net service` (the quarantine zone's
 * services). Thin: flags become the API's request bodies; the daemon validates, authorizes and audits.
 */
import { Command, InvalidArgumentError } from "commander";
import { call } from "../client.ts";
import { printJson, printTable } from "../output.ts";
import { enc, vmPath } from "./common.ts";

interface FwChange {
  version: number;
  summary: string;
  installed: boolean;
  reason?: string;
  notes: string[];
}

interface FwShow {
  vm: string;
  version: number;
  policy: { defaults: { in: string; out: string } };
  rules: { index: number; text: string; note?: string }[];
  quarantine: { since: string; reason: string; actor: string } | null;
  nics: { nic: string; network: string; tap: string; ip: string; mac: string }[];
  installed: { family: string; chain: string; rules: string[] }[];
  lastApply: { installed: boolean; reason?: string; at: string } | null;
}

/** A `--peer` value as the API's peer object: CIDR, vm:NAME or label:k=v (the daemon checks the details). */
function peerOf(text: string): Record<string, string> {
  if (text.startsWith("vm:")) return { vm: text.slice(3) };
  if (text.startsWith("label:")) return { label: text.slice(6) };
  if (/^[0-9.]+(\/\d+)?$/.test(text)) return { cidr: text };
  throw new InvalidArgumentError('use a CIDR ("10.77.0.0/24"), "vm:NAME" or "label:key=value"');
}

function intArg(what: string) {
  return (v: string): number => {
    if (!/^\d{1,5}$/.test(v)) throw new InvalidArgumentError(`${what} must be a positive integer`);
    return Number(v);
  };
}

function changed(vm: string, r: FwChange): void {
  process.stdout.write(`VM ${vm}: firewall policy version ${r.version} (${r.summary})${r.installed ? ", installed" : `, NOT installed: ${r.reason ?? "unknown reason"}`}\n`);
  for (const n of r.notes) process.stdout.write(`note: ${n}\n`);
}

function sub(program: Command, name: string, description: string): Command {
  return program.commands.find((c) => c.name() === name) ?? program.command(name).description(description);
}

/** Adds `fw`, `vm quarantine|release` and `net service`. */
export function registerFirewall(program: Command): void {
  const fw = program.command("fw").description("A VM's firewall policy: ordered rules, first match wins, a default per direction");
  fw.command("show <vm>")
    .description("The policy, its version, and the rules installed on this host for the VM's NICs")
    .option("--json", "machine-readable output")
    .action(async (vm: string, o: { json?: boolean }) => {
      const r = await call<FwShow>("GET", vmPath(vm, "/firewall"));
      if (o.json) return printJson(r);
      process.stdout.write(`VM ${r.vm}: policy version ${r.version}${r.version === 0 ? " (the default)" : ""}; default in ${r.policy.defaults.in}, out ${r.policy.defaults.out}\n`);
      if (r.quarantine) process.stdout.write(`QUARANTINED since ${r.quarantine.since} by ${r.quarantine.actor}: ${r.quarantine.reason}\n`);
      if (r.rules.length === 0) process.stdout.write("no rules\n");
      for (const x of r.rules) process.stdout.write(`${String(x.index).padStart(4)}  ${x.text}${x.note ? `   (${x.note})` : ""}\n`);
      if (r.nics.length === 0) process.stdout.write("installed: nothing (no NIC of this VM is attached on this host)\n");
      else {
        printTable(r.nics, [["nic", "NIC"], ["network", "NETWORK"], ["tap", "TAP"], ["mac", "MAC"], ["ip", "IP"]]);
        for (const ch of r.installed) {
          process.stdout.write(`${ch.family} ${ch.chain}:\n`);
          for (const line of ch.rules) process.stdout.write(`    ${line}\n`);
        }
      }
      if (r.lastApply && !r.lastApply.installed) process.stdout.write(`last install FAILED at ${r.lastApply.at}: ${r.lastApply.reason ?? ""}\n`);
    });
  fw.command("add <vm>")
    .description("Add a rule (last, or at position --at)")
    .requiredOption("--dir <dir>", "in or out")
    .requiredOption("--proto <proto>", "tcp, udp, icmp or any")
    .option("--port <ports>", 'a port "N" or range "N-M" (tcp/udp only)')
    .option("--peer <peer>", "CIDR, vm:NAME or label:k=v (default: any)", peerOf)
    .option("--action <action>", "accept or drop", "accept")
    .option("--at <n>", "insert at this 1-based position", intArg("--at"))
    .option("--comment <text>", "free text (≤ 200 printable characters)")
    .action(async (vm: string, o: { dir: string; proto: string; port?: string; peer?: Record<string, string>; action: string; at?: number; comment?: string }) => {
      const rule = { direction: o.dir, action: o.action, proto: o.proto, ...(o.port ? { ports: o.port } : {}), ...(o.peer ? { peer: o.peer } : {}), ...(o.comment !== undefined ? { comment: o.comment } : {}) };
      changed(vm, await call<FwChange>("POST", vmPath(vm, "/firewall/rules"), { rule, ...(o.at !== undefined ? { at: o.at } : {}) }));
    });
  fw.command("remove <vm> <index>")
    .description("Remove rule INDEX (as `fw show` numbers them)")
    .action(async (vm: string, index: string) => {
      intArg("INDEX")(index);
      changed(vm, await call<FwChange>("DELETE", vmPath(vm, `/firewall/rules/${enc(index)}`)));
    });
  fw.command("default <vm>")
    .description("Set the default verdict per direction")
    .option("--in <verdict>", "accept or drop")
    .option("--out <verdict>", "accept or drop")
    .action(async (vm: string, o: { in?: string; out?: string }) => {
      changed(vm, await call<FwChange>("PATCH", vmPath(vm, "/firewall/defaults"), { ...(o.in ? { in: o.in } : {}), ...(o.out ? { out: o.out } : {}) }));
    });
  fw.command("history <vm>")
    .description("Every version of the VM's policy")
    .option("--json", "machine-readable output")
    .action(async (vm: string, o: { json?: boolean }) => {
      const r = await call<{ versions: { version: number; actor: string; createdAt: string; policy: { rules: unknown[]; defaults: { in: string; out: string } } }[] }>("GET", vmPath(vm, "/firewall/history"));
      if (o.json) return printJson(r);
      printTable(r.versions.map((v) => ({ ...v, rules: v.policy.rules.length, defaults: `in ${v.policy.defaults.in}, out ${v.policy.defaults.out}` })), [["version", "VERSION"], ["createdAt", "WHEN"], ["actor", "BY"], ["rules", "RULES"], ["defaults", "DEFAULTS"]]);
    });

  const vmCmd = sub(program, "vm", "Manage virtual machines");
  vmCmd.command("quarantine <vm>")
    .description("Move the VM into the quarantine zone: only the zone's services stay reachable (no restart)")
    .requiredOption("--reason <text>", "why (recorded in the audit log)")
    .action(async (vm: string, o: { reason: string }) => {
      const r = await call<{ changed: boolean; since: string; installed: boolean; reason?: string }>("POST", vmPath(vm, "/quarantine"), { reason: o.reason });
      process.stdout.write(`VM ${vm} ${r.changed ? "is now" : "was already"} in quarantine (since ${r.since})${r.installed ? "" : `; rules NOT installed: ${r.reason ?? "no switch on this host"}`}\n`);
    });
  vmCmd.command("release <vm>")
    .description("Take the VM out of the quarantine zone (no restart)")
    .action(async (vm: string) => {
      const r = await call<{ changed: boolean; installed: boolean; reason?: string }>("POST", vmPath(vm, "/release"));
      process.stdout.write(`VM ${vm} ${r.changed ? "is released from" : "was not in"} quarantine${r.installed ? "" : `; rules NOT installed: ${r.reason ?? "no switch on this host"}`}\n`);
    });

  const net = sub(program, "net", "Virtual networks");
  const service = net.command("service").description("The quarantine zone's named services");
  service.command("add <name>")
    .description("Name a service quarantined VMs may reach")
    .requiredOption("--addr <ip>", "the service's IPv4 address")
    .requiredOption("--port <port>", "its port", intArg("--port"))
    .option("--proto <proto>", "tcp or udp", "tcp")
    .action(async (name: string, o: { addr: string; port: number; proto: string }) => {
      await call("POST", "/v1/quarantine/services", { name, ip: o.addr, port: o.port, proto: o.proto });
      process.stdout.write(`Quarantine service ${name} added: ${o.proto} ${o.addr}:${o.port}\n`);
    });
  service.command("list")
    .description("The quarantine zone's services")
    .option("--json", "machine-readable output")
    .action(async (o: { json?: boolean }) => {
      const r = await call<{ services: Array<Record<string, unknown>> }>("GET", "/v1/quarantine/services");
      if (o.json) return printJson(r.services);
      printTable(r.services, [["name", "NAME"], ["proto", "PROTO"], ["ip", "ADDRESS"], ["port", "PORT"]]);
    });
  service.command("remove <name>")
    .description("Remove a quarantine service")
    .action(async (name: string) => {
      await call("DELETE", `/v1/quarantine/services/${enc(name)}`);
      process.stdout.write(`Quarantine service ${name} removed\n`);
    });
}
