/**
 * `vigil vm`: the group and its lifecycle and inspection commands (create, start/stop/…, list, show, showcmd). The
 * guest, provenance and lineage commands are added from their own modules, in this order, which is the help's order.
 */
import { type Command, Option } from "commander";
import { VigilError } from "../../errors.ts";
import { ApiError, call } from "../client.ts";
import { accelCell, printJson, printTable, startedMessage, withSpinner } from "../output.ts";
import { collect, keyValues, positiveInt, vmPath, type Vm } from "./common.ts";
import { registerVmGuest } from "./vm-guest.ts";
import { registerVmProvenance } from "./vm-provenance.ts";
import { registerVmLineage } from "./vm-lineage.ts";

/** Adds `vm` and all its subcommands. */
export function registerVm(program: Command): void {
  const vm = program.command("vm").description("Virtual machines");

  // --nic and --no-nic set the same option; which of them was given is tracked here to refuse both together.
  const nicFlags = { nic: false, noNic: false };
  vm.command("create <name>")
    .on("option:nic", () => void (nicFlags.nic = true))
    .on("option:no-nic", () => void (nicFlags.noNic = true))
    .description("Create a VM from an image")
    .option("--image <image>", "image to create it from", "tiny")
    .option("--memory <MiB>", "memory in MiB", positiveInt("--memory"))
    .option("--vcpus <n>", "virtual CPUs", positiveInt("--vcpus"))
    .addOption(new Option("--cpu <model>", "CPU model").choices(["max", "qemu64", "host"]))
    .option("--disk <name:MiB>", "add a blank data disk (repeatable)", collect)
    .option("--nic <restrict|open>", "add a user-mode NIC; restrict (default) has no way out (repeatable)", (v: string, previous: unknown) => [...(Array.isArray(previous) ? (previous as string[]) : []), v])
    .option("--no-nic", "no network card at all")
    .option("--net <network>", "add a NIC bridged onto a vigil network (`vigil net create`; repeatable)", collect)
    .option("--no-agent", "no guest agent channel")
    .addOption(new Option("--storage <where>", "where its disks live: local (default) or shared (the agent's --shared-storage; HA restarts need it)").choices(["local", "shared"]))
    .option("--cmdline <words>", "extra kernel command-line words")
    .option("--owner <user:NAME|group:NAME>", "owner (default: you)")
    .option("--approver <name>", "who approved this VM")
    .option("--purpose <text>", "what it is for")
    .option("--expires <date>", "expiry: YYYY-MM-DD (the end of that day, UTC) or an ISO time; must be in the future")
    .option("--label <key=value>", "label (repeatable)", collect)
    .option("--json", "machine-readable output")
    .action(async (name: string, o: Record<string, unknown>) => {
      const req: Record<string, unknown> = { name, image: o.image };
      if (o.memory !== undefined) req.memoryMiB = o.memory;
      if (o.vcpus !== undefined) req.vcpus = o.vcpus;
      if (o.cpu !== undefined) req.cpu = o.cpu;
      if (o.cmdline !== undefined) req.cmdline = o.cmdline;
      if (o.disk) {
        req.disks = (o.disk as string[]).map((d) => {
          const m = /^([a-z][a-z0-9]{0,15}):(\d+)$/.exec(d);
          if (!m) throw new ApiError("VIGIL_BAD_REQUEST", `Invalid --disk ${JSON.stringify(d)}: use NAME:MiB, e.g. data:1024`, 0, "disk");
          return { name: m[1], sizeMiB: Number(m[2]) };
        });
      }
      if (nicFlags.nic && nicFlags.noNic) throw new ApiError("VIGIL_BAD_REQUEST", "Use either --nic or --no-nic, not both", 0, "nic");
      if (o.nic === false && o.net) throw new ApiError("VIGIL_BAD_REQUEST", "Use either --net or --no-nic, not both", 0, "net");
      const nics: Array<Record<string, unknown>> = [];
      if (Array.isArray(o.nic)) {
        for (const n of o.nic as string[]) {
          if (n !== "restrict" && n !== "open") throw new ApiError("VIGIL_BAD_REQUEST", `Invalid --nic ${JSON.stringify(n)}: use "restrict" or "open"`, 0, "nic");
          nics.push({ restrict: n === "restrict" });
        }
      }
      // --net NAME: a NIC bridged onto that network, after any --nic cards (the server checks the name).
      for (const network of (o.net as string[] | undefined) ?? []) nics.push({ network });
      if (o.nic === false) req.nics = [];
      else if (nics.length > 0) req.nics = nics;
      if (o.agent === false) req.agent = false;
      if (o.storage !== undefined) req.storage = o.storage;
      for (const [flag, field] of [["owner", "owner"], ["approver", "approver"], ["purpose", "purpose"], ["expires", "expiresAt"]] as const) {
        if (o[flag] !== undefined) req[field] = o[flag];
      }
      if (o.label) req.labels = keyValues("label", o.label as string[], "KEY=VALUE");
      const created = await call<Vm>("POST", "/v1/vms", req);
      if (o.json) return printJson(created);
      process.stdout.write(`Created VM ${created.name} (${created.id as string})\n`);
    });

  vm.command("start <name>")
    .description("Start a VM")
    .option("--wait", "wait until the guest agent answers")
    .option("--timeout <sec>", "how long --wait may take", positiveInt("--timeout"), 120)
    .option("--paused", "start with the vCPUs paused")
    .option("--record", "record its execution under QEMU record/replay (TCG, one vCPU; see vigil recording)")
    .option("--shadow", "with --record: a replica trails the recording and runs the IDS checks on its RAM")
    .option("--gate-output", "with --shadow: console output is shown only once the shadow has checked up to it")
    .option("--json", "machine-readable output")
    .action(async (name: string, o: { wait?: boolean; timeout: number; paused?: boolean; record?: boolean; shadow?: boolean; gateOutput?: boolean; json?: boolean }) => {
      if ((o.shadow || o.gateOutput) && !o.record) throw new VigilError("VIGIL_BAD_REQUEST", `${o.shadow ? "--shadow" : "--gate-output"} trails a recording: it needs --record`, { field: o.shadow ? "--shadow" : "--gate-output" });
      if (o.gateOutput && !o.shadow) throw new VigilError("VIGIL_BAD_REQUEST", "--gate-output waits for the shadow's checks: it needs --shadow", { field: "--gate-output" });
      if (o.record) {
        if (o.paused) throw new VigilError("VIGIL_BAD_REQUEST", "--record and --paused cannot be combined: a recording starts at the guest's first instruction", { field: "--paused" });
        const r = await withSpinner(`Starting ${name} recording${o.wait ? " and waiting for its agent" : ""}`, call<{ vm: Vm; recording: { name: string } }>("POST", vmPath(name, "/record"), { wait: o.wait ?? false, waitTimeoutMs: o.timeout * 1000, ...(o.shadow ? { shadow: true } : {}), ...(o.gateOutput ? { gateOutput: true } : {}) }));
        if (o.json) return printJson(r);
        process.stdout.write(`VM ${name} is running and recording as ${r.recording.name} (TCG, icount)${o.shadow ? `, with a shadow checking it (vigil recording show ${r.recording.name})` : ""}; it ends when the guest powers off (vigil vm stop ${name})\n`);
        return;
      }
      const work = call<Vm>("POST", vmPath(name, "/start"), { wait: o.wait ?? false, waitTimeoutSec: o.timeout, paused: o.paused ?? false });
      const v = o.wait ? await withSpinner(`Starting ${name} and waiting for its agent`, work) : await work;
      if (o.json) return printJson(v);
      process.stdout.write(startedMessage(v, o.wait ?? false, o.paused ?? false));
    });

  vm.command("stop <name>")
    .description("Stop a VM: ACPI power-off, then QEMU quit, then kill (each after a timeout)")
    .option("--timeout <sec>", "how long the guest gets to power off", positiveInt("--timeout"), 60)
    .option("--json", "machine-readable output")
    .action(async (name: string, o: { timeout: number; json?: boolean }) => {
      const r = await withSpinner(`Stopping ${name}`, call<{ how: string; vm: Vm }>("POST", vmPath(name, "/stop"), { timeoutSec: o.timeout }));
      if (o.json) return printJson(r);
      process.stdout.write(`VM ${name} stopped (${r.how})\n`);
    });

  for (const [action, text, done] of [
    ["kill", "Kill a VM's QEMU immediately", "killed"],
    ["pause", "Pause a VM's vCPUs", "paused"],
    ["resume", "Resume a paused VM", "resumed"],
  ] as const) {
    vm.command(`${action} <name>`)
      .description(text)
      .option("--json", "machine-readable output")
      .action(async (name: string, o: { json?: boolean }) => {
        const v = await call<Vm>("POST", vmPath(name, `/${action}`));
        if (o.json) return printJson(v);
        process.stdout.write(`VM ${name} ${done}\n`);
      });
  }

  vm.command("restart <name>")
    .description("Restart a VM in a fresh QEMU process")
    .option("--wait", "wait until the guest agent answers")
    .option("--timeout <sec>", "how long --wait may take", positiveInt("--timeout"), 120)
    .option("--json", "machine-readable output")
    .action(async (name: string, o: { wait?: boolean; timeout: number; json?: boolean }) => {
      const v = await withSpinner(`Restarting ${name}`, call<Vm>("POST", vmPath(name, "/restart"), { wait: o.wait ?? false, waitTimeoutSec: o.timeout }));
      if (o.json) return printJson(v);
      process.stdout.write(`VM ${name} restarted (pid ${v.pid as number})\n`);
    });

  vm.command("destroy <name>")
    .description("Delete a stopped VM and its files (--force kills it first)")
    .option("--force", "kill it first if it is running")
    .option("--json", "machine-readable output")
    .action(async (name: string, o: { force?: boolean; json?: boolean }) => {
      const r = await call<{ destroyed: unknown[] }>("DELETE", vmPath(name, o.force ? "?force=true" : ""));
      if (o.json) return printJson(r);
      process.stdout.write(`VM ${name} destroyed\n`);
    });

  vm.command("list")
    .description("List VMs")
    .option("--json", "machine-readable output")
    .action(async (o: { json?: boolean }) => {
      const { vms } = await call<{ vms: Vm[] }>("GET", "/v1/vms");
      if (o.json) return printJson(vms);
      printVmTable(vms);
    });

  vm.command("status <name>")
    .description("Print a VM's state")
    .option("--json", "machine-readable output")
    .action(async (name: string, o: { json?: boolean }) => {
      const v = await call<Vm>("GET", vmPath(name));
      if (o.json) return printJson({ name: v.name, state: v.state, pid: v.pid, accelerator: v.accelerator, expired: v.expired });
      process.stdout.write(`${v.state}\n`);
    });

  vm.command("show <name>")
    .description("Everything about a VM: spec, state, accelerator, vmgenid, pid, runtime paths, ownership")
    .option("--json", "machine-readable output")
    .action(async (name: string, o: { json?: boolean }) => {
      const v = await call<Vm>("GET", vmPath(name));
      if (o.json) return printJson(v);
      const fields = ["id", "name", "state", "owner", "approver", "purpose", "expiresAt", "accelerator", "vmgenid", "generation", "pid", "host", "createdBy", "createdAt"];
      for (const f of fields) process.stdout.write(`${f.padEnd(12)} ${v[f] === null || v[f] === undefined ? "-" : String(v[f])}\n`);
      process.stdout.write(`${"spec".padEnd(12)} ${v.spec.vcpus} vCPU, ${v.spec.memoryMiB} MiB, image ${v.spec.image}\n`);
      // Bridged NICs plugged into a vigil network now (docs/network.md, "VM NICs").
      for (const n of (v.nics as Array<{ name: string; network: string; ip: string; mac: string; tap: string }> | undefined) ?? []) {
        process.stdout.write(`${"nic".padEnd(12)} ${n.name}: network ${n.network}, ip ${n.ip}, mac ${n.mac}, tap ${n.tap}\n`);
      }
      process.stdout.write(`${"paths".padEnd(12)} ${JSON.stringify(v.paths, null, 2).replaceAll("\n", "\n" + " ".repeat(13))}\n`);
    });

  vm.command("showcmd <name>")
    .description("The exact QEMU command line vigil runs for a VM")
    .option("--json", "machine-readable output")
    .action(async (name: string, o: { json?: boolean }) => {
      const r = await call<{ binary: string; argv: string[] }>("GET", vmPath(name, "/qemu-command"));
      if (o.json) return printJson(r);
      const quote = (a: string) => (/^[A-Za-z0-9_\/.,:=@+-]+$/.test(a) ? a : `'${a.replaceAll("'", "'\\''")}'`);
      process.stdout.write([r.binary, ...r.argv].map(quote).join(" \\\n  ") + "\n");
    });
  registerVmGuest(vm);
  registerVmProvenance(vm);
  registerVmLineage(vm);
}

function printVmTable(vms: Vm[]): void {
  printTable(
    vms.map((v) => ({ ...v, accelerator: accelCell(v), vcpus: v.spec.vcpus, memory: `${v.spec.memoryMiB}M`, image: v.spec.image, flags: [v.template ? "template" : "", v.expired ? "EXPIRED" : ""].filter(Boolean).join(",") })),
    [
      ["name", "NAME"],
      ["state", "STATE"],
      ["vcpus", "VCPUS"],
      ["memory", "MEMORY"],
      ["image", "IMAGE"],
      ["accelerator", "ACCEL"],
      ["owner", "OWNER"],
      ["posture", "POSTURE"],
      ["vmgenid", "VMGENID"],
      ["flags", "FLAGS"],
    ],
  );
}
