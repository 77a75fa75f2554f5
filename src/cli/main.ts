/**
 * The `vigil` command: a thin client of the daemon's API. Each command turns its arguments into one API request
 * and prints the answer (a table, or JSON with --json). `vigil serve` is the exception: it runs the daemon.
 * Kept free of heavy imports so a command starts fast (the boot benchmark measures `vm start --wait`).
 */
import { Command, CommanderError, Option } from "commander";
import { accessSync, chmodSync, constants as fsConstants, createWriteStream, existsSync, mkdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { dirname } from "node:path";
import { randomUUID } from "node:crypto";
import { basename, resolve as resolvePath } from "node:path";
import { ApiError, call, clientConfigPath, daemonUrl, download, events, fetchServerCert, inputFile, stream, upload, upgrade } from "./client.ts";
import { EXIT, exitCodeFor } from "./exit-codes.ts";
import { parseGuestViewEvery, parseInterval, parsePolicy, watchBody } from "./watch-args.ts";
import { accelCell, clearLine, plural, printJson, printTable, progressLine, sortNumerically, startedMessage, visibleControls, withSpinner } from "./output.ts";

type Vm = Record<string, unknown> & { name: string; state: string; spec: { vcpus: number; memoryMiB: number; image: string | null; agent?: boolean } };

const enc = encodeURIComponent;
const vmPath = (name: string, suffix = "") => `/v1/vms/${enc(name)}${suffix}`;

function collect(value: string, previous: string[] = []): string[] {
  return [...previous, value];
}

function positiveInt(flag: string) {
  return (v: string) => {
    if (!/^\d+$/.test(v)) throw new ApiError("VIGIL_BAD_REQUEST", `Invalid ${flag} ${JSON.stringify(v)}: must be a whole number`, 0, flag);
    return Number(v);
  };
}

/**
 * Checks before any request is sent that `path` (given with `flag`) can be created: its directory exists and is
 * writable, and the path itself is not a directory. Returns the absolute path.
 */
export function writableOutput(flag: string, path: string): string {
  const abs = resolvePath(path);
  const dir = dirname(abs);
  const refuse = (why: string) => new ApiError("VIGIL_BAD_REQUEST", `Cannot write ${flag} ${JSON.stringify(path)}: ${why}`, 0, flag);
  let st;
  try {
    st = statSync(dir);
  } catch {
    throw refuse(`the directory ${JSON.stringify(dir)} does not exist`);
  }
  if (!st.isDirectory()) throw refuse(`${JSON.stringify(dir)} is not a directory`);
  try {
    accessSync(dir, fsConstants.W_OK);
  } catch {
    throw refuse(`the directory ${JSON.stringify(dir)} is not writable`);
  }
  if (existsSync(abs) && statSync(abs).isDirectory()) throw refuse("it is a directory");
  return abs;
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
      ["vmgenid", "VMGENID"],
      ["flags", "FLAGS"],
    ],
  );
}

async function readSecretFromStdin(prompt: string): Promise<string> {
  if (process.env.VIGIL_TOKEN) return process.env.VIGIL_TOKEN;
  if (process.stdin.isTTY) process.stderr.write(prompt);
  const chunks: Buffer[] = [];
  for await (const chunk of process.stdin) {
    chunks.push(chunk as Buffer);
    if (Buffer.concat(chunks).includes(0x0a)) break;
  }
  return Buffer.concat(chunks).toString("utf8").split("\n")[0]!.trim();
}

async function interactiveConsole(name: string): Promise<void> {
  const socket = await upgrade(vmPath(name, "/console"));
  process.stderr.write(`Connected to the console of ${name}. Press Ctrl-] to leave.\r\n`);
  const stdin = process.stdin;
  if (stdin.isTTY) stdin.setRawMode(true);
  stdin.resume();
  await new Promise<void>((resolve) => {
    const done = () => {
      if (stdin.isTTY) stdin.setRawMode(false);
      stdin.pause();
      socket.destroy();
      resolve();
    };
    stdin.on("data", (d: Buffer) => {
      if (d.includes(0x1d)) return done(); // Ctrl-]
      socket.write(d);
    });
    socket.on("data", (d: Buffer) => process.stdout.write(d));
    socket.on("close", done);
  });
  process.stderr.write("\r\nDisconnected.\r\n");
}

/**
 * Runs a long request under a fresh request id and, on a terminal, draws the progress the daemon reports for
 * it on the events stream (snapshot jobs, copies, compression).
 */
async function withProgress<T>(label: string, work: (requestId: string) => Promise<T>): Promise<T> {
  const requestId = randomUUID();
  if (!process.stderr.isTTY) return work(requestId);
  const follow = events(`/v1/events?progress=${requestId}`, (event, data) => {
    if (event !== "progress") return;
    const p = JSON.parse(data) as { what: string; current: number; total: number };
    progressLine(`${label} (${p.what})`, p.current, p.total);
  }).catch(() => undefined);
  try {
    return await withSpinner(label, work(requestId));
  } finally {
    clearLine();
    void follow;
  }
}

/** What the CLI needs from outside its bundle: the daemon is loaded only by `vigil serve`. */
export interface CliHooks {
  loadDaemon: () => Promise<{ runDaemon(options: { listen: string; tls?: "auto" | "off" | { cert: string; key: string } | undefined }): Promise<void>; runWitnessServer(options: { dir: string; siteKeyPath: string; listen: string }): Promise<void> }>;
}

export function buildProgram(hooks: CliHooks): Command {
  const program = new Command("vigil")
    .description("Virtual infrastructure with security built in: QEMU VMs with ownership, audit and rollback-safe time.")
    .showHelpAfterError()
    .exitOverride();

  program
    .command("serve")
    .description("Run the daemon (manager + local host) in the foreground")
    .option("--listen <addr:port>", 'TCP address for the HTTP API, or "none"', "127.0.0.1:7450")
    .option("--tls", "serve HTTPS even on a loopback address (always on elsewhere)")
    .option("--no-tls", "plain HTTP (refused on a non-loopback address)")
    .option("--tls-cert <file>", "PEM certificate for HTTPS (default: a self-signed one in VIGIL_HOME/keys)")
    .option("--tls-key <file>", "PEM private key for --tls-cert")
    .action(async (o: { listen: string; tls?: boolean; tlsCert?: string; tlsKey?: string }) => {
      if ((o.tlsCert === undefined) !== (o.tlsKey === undefined)) throw new ApiError("VIGIL_BAD_REQUEST", "Give --tls-cert and --tls-key together", 0, o.tlsCert ? "tls-key" : "tls-cert");
      if (o.tls === false && o.tlsCert) throw new ApiError("VIGIL_BAD_REQUEST", "Use either --no-tls or --tls-cert/--tls-key, not both", 0, "tls");
      const tls = o.tlsCert && o.tlsKey ? { cert: o.tlsCert, key: o.tlsKey } : o.tls === true ? ("auto" as const) : o.tls === false ? ("off" as const) : undefined;
      const { runDaemon } = await hooks.loadDaemon();
      try {
        await runDaemon({ listen: o.listen, tls });
      } catch (err) {
        // The daemon has closed what it opened; exit now so nothing half-started keeps the process alive.
        process.exit(report(err));
      }
    });

  program
    .command("host")
    .description("This host: accelerator (and why), version, VIGIL_HOME")
    .option("--json", "machine-readable output")
    .action(async (o: { json?: boolean }) => {
      const h = await call<Record<string, string> & { audit?: AuditHealthView }>("GET", "/v1/host");
      if (o.json) return printJson(h);
      const { audit: health, ...facts } = h;
      for (const [k, v] of Object.entries(facts)) process.stdout.write(`${k.padEnd(12)} ${v}\n`);
      if (health) {
        process.stdout.write(`${"audit".padEnd(12)} ${health.ok ? "ok" : "TAMPERED"}${health.head ? ` (${plural(health.head.size, "record")}, root ${health.head.rootHash.slice(0, 16)}…)` : ""}\n`);
        for (const f of health.findings) process.stdout.write(`${"".padEnd(12)} finding: ${f}\n`);
        for (const w of health.warnings ?? []) process.stdout.write(`${"".padEnd(12)} warning: ${w}\n`);
        for (const r of health.tamperRecords) process.stdout.write(`${"".padEnd(12)} audit.tamper record ${r.seq} at ${r.time}\n`);
        for (const w of health.witnesses) {
          process.stdout.write(`${"witness".padEnd(12)} ${w.name}: ${w.lastPublished ? `head ${w.lastPublished.size} at ${w.lastPublished.time}` : "nothing published yet"}${w.lastError ? `; last error: ${w.lastError}` : ""}\n`);
        }
        if (!health.ok) process.exitCode = EXIT.conflict;
      }
    });

  program
    .command("whoami")
    .description("Who the daemon thinks you are")
    .option("--json", "machine-readable output")
    .action(async (o: { json?: boolean }) => {
      const me = await call<{ name: string; roles: string[]; introspect: boolean; groups: string[]; via: string }>("GET", "/v1/whoami");
      if (o.json) return printJson(me);
      // The introspect grant is not a role (no role implies it): its own field, yes or no.
      process.stdout.write(`${me.name} (roles: ${me.roles.join(", ") || "none"}; introspect: ${me.introspect ? "yes" : "no"}; groups: ${me.groups.join(", ") || "none"}; via ${me.via})\n`);
    });

  program
    .command("login")
    .description("Store the daemon URL and a token (read from stdin or VIGIL_TOKEN, never from the command line) in ~/.config/vigil/config.json (0600)")
    .requiredOption("--url <url>", "daemon URL, e.g. https://vigil.example:7450 (http only for loopback)")
    .option("--fingerprint <sha256>", "for https: the certificate fingerprint `vigil serve` logged (otherwise trusted on first use)")
    .action(async (o: { url: string; fingerprint?: string }) => {
      const url = daemonUrl(o.url, "--url");
      const token = await readSecretFromStdin("Token: ");
      if (!token) throw new ApiError("VIGIL_BAD_REQUEST", "No token given: pipe it on stdin or set VIGIL_TOKEN", 0, "token");
      // https: pin the certificate before the token is sent anywhere; the token then goes only to this URL.
      const pin = url.protocol === "https:" ? await fetchServerCert(url) : undefined;
      if (pin && o.fingerprint && pin.fingerprint.toUpperCase() !== o.fingerprint.toUpperCase()) {
        throw new ApiError("VIGIL_FORBIDDEN", `The daemon at ${url.href} presented certificate ${pin.fingerprint}, not ${o.fingerprint}: not logging in`, 0, "fingerprint");
      }
      const me = await call<{ name: string }>("GET", "/v1/whoami", undefined, { url, token, ...(pin ? { pin } : {}) });
      const path = clientConfigPath();
      mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
      writeFileSync(path, JSON.stringify({ url: url.href, token, ...(pin ?? {}) }, null, 2) + "\n", { mode: 0o600 });
      chmodSync(path, 0o600); // the mode option applies only to a file that did not exist
      process.stdout.write(`Logged in to ${url.href} as ${me.name}${pin ? ` (certificate ${pin.fingerprint} pinned)` : ""}\n`);
    });

  program
    .command("logout")
    .description("Forget the stored URL and token")
    .action(() => {
      rmSync(clientConfigPath(), { force: true });
    });

  // ---- images ----
  const image = program.command("image").description("Images VMs are created from");
  image
    .command("list")
    .description("List images (the built-in `tiny` and templates)")
    .option("--json", "machine-readable output")
    .action(async (o: { json?: boolean }) => {
      const { images } = await call<{ images: Array<Record<string, unknown>> }>("GET", "/v1/images");
      if (o.json) return printJson(images);
      printTable(
        images.map((i) => ({ ...i, size: `${Math.round(Number(i.sizeBytes) / 1024 / 1024)}M` })),
        [
          ["name", "NAME"],
          ["kind", "KIND"],
          ["size", "SIZE"],
          ["description", "DESCRIPTION"],
        ],
      );
    });

  image
    .command("import <file>")
    .description("Bring an existing disk in as an image (standalone qcow2 or raw; converted to qcow2)")
    .requiredOption("--name <name>", "the image's name")
    .addOption(new Option("--format <format>", "the file's format").choices(["qcow2", "raw"]))
    .option("--description <text>", "what it is")
    .option("--json", "machine-readable output")
    .action(async (file: string, o: { name: string; format?: string; description?: string; json?: boolean }) => {
      const abs = resolvePath(file);
      const format = o.format ?? (abs.endsWith(".qcow2") ? "qcow2" : abs.endsWith(".raw") || abs.endsWith(".img") ? "raw" : undefined);
      if (!format) throw new ApiError("VIGIL_BAD_REQUEST", "Cannot tell the disk's format from its name: use --format qcow2|raw", 0, "format");
      const query = new URLSearchParams({ name: o.name, format, source: abs, ...(o.description ? { description: o.description } : {}) });
      const img = await withProgress(`Importing ${basename(abs)}`, (rid) => upload<Record<string, unknown>>(`/v1/images?${query.toString()}`, abs, { requestId: rid, contentType: "application/octet-stream", onBytes: (d, t) => progressLine("Uploading", d, t) }));
      clearLine();
      if (o.json) return printJson(img);
      process.stdout.write(`Imported ${basename(abs)} as image ${o.name}\n`);
    });
  image
    .command("delete <name>")
    .description("Delete an imported image that no VM is built on")
    .action(async (name: string) => {
      await call("DELETE", `/v1/images/${enc(name)}`);
      process.stdout.write(`Image ${name} deleted\n`);
    });

  // ---- vms ----
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
    .option("--no-agent", "no guest agent channel")
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
      if (o.nic === false) req.nics = [];
      else if (Array.isArray(o.nic)) {
        req.nics = (o.nic as string[]).map((n) => {
          if (n !== "restrict" && n !== "open") throw new ApiError("VIGIL_BAD_REQUEST", `Invalid --nic ${JSON.stringify(n)}: use "restrict" or "open"`, 0, "nic");
          return { restrict: n === "restrict" };
        });
      }
      if (o.agent === false) req.agent = false;
      for (const [flag, field] of [["owner", "owner"], ["approver", "approver"], ["purpose", "purpose"], ["expires", "expiresAt"]] as const) {
        if (o[flag] !== undefined) req[field] = o[flag];
      }
      if (o.label) {
        req.labels = Object.fromEntries(
          (o.label as string[]).map((l) => {
            const i = l.indexOf("=");
            if (i <= 0) throw new ApiError("VIGIL_BAD_REQUEST", `Invalid --label ${JSON.stringify(l)}: use KEY=VALUE`, 0, "label");
            return [l.slice(0, i), l.slice(i + 1)];
          }),
        );
      }
      const created = await call<Vm>("POST", "/v1/vms", req);
      if (o.json) return printJson(created);
      process.stdout.write(`Created VM ${created.name} (${created.id as string})\n`);
    });

  vm.command("start <name>")
    .description("Start a VM")
    .option("--wait", "wait until the guest agent answers")
    .option("--timeout <sec>", "how long --wait may take", positiveInt("--timeout"), 120)
    .option("--paused", "start with the vCPUs paused")
    .option("--json", "machine-readable output")
    .action(async (name: string, o: { wait?: boolean; timeout: number; paused?: boolean; json?: boolean }) => {
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

  vm.command("console <name>")
    .description("Attach to the serial console (Ctrl-] leaves); --log prints the captured output instead")
    .option("--log", "print the captured console log")
    .option("--bytes <n>", "with --log: how many of the last bytes", positiveInt("--bytes"), 65536)
    .option("--raw", "with --log: pass the guest's bytes through unchanged, control characters included (on a terminal they are shown as ^[ etc.)")
    .action(async (name: string, o: { log?: boolean; bytes: number; raw?: boolean }) => {
      if (o.log) {
        const text = await call<string>("GET", vmPath(name, `/console-log?bytes=${o.bytes}`));
        // A hostile guest must not drive the operator's terminal: escape sequences are shown, not obeyed.
        process.stdout.write(process.stdout.isTTY && !o.raw ? visibleControls(text) : text);
        return;
      }
      await interactiveConsole(name);
    });

  vm.command("ps <name>")
    .description("The guest's own process list, from its agent")
    .option("--json", "machine-readable output")
    .action(async (name: string, o: { json?: boolean }) => {
      const r = await call<{ processes: Array<Record<string, unknown>> }>("GET", vmPath(name, "/guest/ps"));
      if (o.json) return printJson(r);
      printTable(sortNumerically(r.processes, "pid"), [
        ["pid", "PID"],
        ["ppid", "PPID"],
        ["state", "S"],
        ["comm", "COMMAND"],
      ]);
    });

  vm.command("info <name>")
    .description("Guest kernel, uptime and agent version")
    .option("--json", "machine-readable output")
    .action(async (name: string, o: { json?: boolean }) => {
      const r = await call<Record<string, unknown>>("GET", vmPath(name, "/guest/info"));
      if (o.json) return printJson(r);
      for (const [k, v] of Object.entries(r)) process.stdout.write(`${k.padEnd(10)} ${String(v)}\n`);
    });

  vm.command("ping <name>")
    .description("Ping the guest agent; prints each round trip")
    .option("-c, --count <n>", "how many", positiveInt("--count"), 3)
    .option("--json", "machine-readable output")
    .action(async (name: string, o: { count: number; json?: boolean }) => {
      const r = await call<{ rttMs: number[] }>("POST", vmPath(name, "/guest/ping"), { count: o.count });
      if (o.json) return printJson(r);
      r.rttMs.forEach((ms, i) => process.stdout.write(`pong from ${name}: seq=${i + 1} time=${ms.toFixed(2)} ms\n`));
    });

  vm.command("exec <name> <argv...>")
    .description("Run an allow-listed command in the guest (vigil vm exec NAME -- uname -a); exits with the command's own status, as ssh does")
    .option("--json", "machine-readable output: exitCode, and stdout/stderr base64-encoded (the guest's bytes as they are)")
    .action(async (name: string, argv: string[], o: { json?: boolean }) => {
      const r = await call<{ exitCode: number; stdout: string; stderr: string }>("POST", vmPath(name, "/guest/exec"), { argv });
      if (o.json) return printJson(r);
      process.stdout.write(Buffer.from(r.stdout, "base64"));
      process.stderr.write(Buffer.from(r.stderr, "base64"));
      // The guest command's status, not one of vigil's: vigil's own failures print "vigil: …" on stderr.
      process.exitCode = Number.isInteger(r.exitCode) && r.exitCode >= 0 && r.exitCode <= 255 ? r.exitCode : 1;
    });

  vm.command("chown <name> <owner>")
    .description("Transfer ownership to user:NAME or group:NAME; the approver is recorded")
    .requiredOption("--approver <name>", "who approved the transfer")
    .option("--reason <text>", "why")
    .option("--json", "machine-readable output")
    .action(async (name: string, owner: string, o: { approver: string; reason?: string; json?: boolean }) => {
      const r = await call<Record<string, string>>("POST", vmPath(name, "/chown"), { owner, approver: o.approver, ...(o.reason ? { reason: o.reason } : {}) });
      if (o.json) return printJson(r);
      process.stdout.write(`VM ${name}: owner ${r.previousOwner} → ${r.owner} (approved by ${r.approver})\n`);
    });

  vm.command("history <name>")
    .description("Who created and touched a VM, where it came from, where it has been")
    .option("--json", "machine-readable output")
    .action(async (name: string, o: { json?: boolean }) => {
      const h = await call<{ id: string; exists: boolean; owner: string; createdBy: string; createdAt: string; lineage: Record<string, unknown> | null; locations: Array<Record<string, string | null>>; events: Array<Record<string, unknown> & { target: { name: string } }> }>("GET", vmPath(name, "/history"));
      if (o.json) return printJson(h);
      process.stdout.write(`VM ${name} (${h.id})${h.exists ? "" : " — destroyed"}\n`);
      process.stdout.write(`  owner ${h.owner}; created by ${h.createdBy} at ${h.createdAt}; lineage ${JSON.stringify(h.lineage)}\n`);
      process.stdout.write("Where it has been:\n");
      for (const l of h.locations) process.stdout.write(`  ${l.since} → ${l.until ?? "now"}  ${l.host}:${l.path}\n`);
      process.stdout.write("What happened:\n");
      printTable(
        h.events.map((e) => ({ ...e, details: JSON.stringify(e.details).slice(0, 80) })),
        [
          ["seq", "SEQ"],
          ["time", "TIME"],
          ["actor", "WHO"],
          ["action", "WHAT"],
          ["result", "RESULT"],
          ["details", "DETAILS"],
        ],
      );
    });

  vm.command("where <name>")
    .description("Every place a VM's data lives now (and lived)")
    .option("--json", "machine-readable output")
    .action(async (name: string, o: { json?: boolean }) => {
      const w = await call<{ live: Array<Record<string, unknown>>; removed: Array<Record<string, unknown>> }>("GET", vmPath(name, "/where"));
      if (o.json) return printJson(w);
      const cols: Array<[string, string]> = [
        ["purpose", "PURPOSE"],
        ["host", "HOST"],
        ["path", "PATH"],
        ["size", "SIZE"],
        ["createdAt", "SINCE"],
      ];
      process.stdout.write("Lives now:\n");
      printTable(w.live, cols);
      if (w.removed.length > 0) {
        process.stdout.write("Lived (removed):\n");
        printTable(w.removed, [...cols, ["removedAt", "REMOVED"], ["removedHow", "HOW"]]);
      }
    });

  vm.command("purge <name>")
    .description("Destroy a VM and overwrite every registered copy of its data vigil can reach")
    .option("--force", "kill it first if it is running")
    .option("--json", "machine-readable output")
    .action(async (name: string, o: { force?: boolean; json?: boolean }) => {
      const r = await call<{ destroyed: Array<{ path: string; purpose: string }>; unreachable: Array<{ path: string; host: string; why: string }>; derived: Array<{ name: string; kind: string; from: string }> }>("POST", vmPath(name, "/purge"), { force: o.force ?? false });
      if (o.json) return printJson(r);
      for (const f of r.destroyed) process.stdout.write(`destroyed    ${f.purpose.padEnd(12)} ${f.path}\n`);
      for (const f of r.unreachable) process.stdout.write(`UNREACHABLE  ${f.host}:${f.path} (${f.why})\n`);
      for (const v of r.derived) process.stdout.write(`DERIVED      VM ${v.name} (${v.kind} of ${v.from}) holds a copy of this VM's data: purge it too if it must go\n`);
      process.stdout.write(`VM ${name} purged: ${r.destroyed.length} file(s) destroyed, ${r.unreachable.length} out of reach${r.derived.length ? `, ${r.derived.length} derived VM(s) not touched` : ""}\n`);
    });

  vm.command("template <name>")
    .description("Freeze a stopped VM as a read-only template (--undo thaws one no clone depends on)")
    .option("--undo", "thaw the template")
    .option("--json", "machine-readable output")
    .action(async (name: string, o: { undo?: boolean; json?: boolean }) => {
      const v = await call<Vm>("POST", vmPath(name, "/template"), { undo: o.undo ?? false });
      if (o.json) return printJson(v);
      process.stdout.write(o.undo ? `VM ${name} is no longer a template\n` : `VM ${name} is now a template\n`);
    });

  vm.command("clone <source> <name>")
    .description("Clone a VM with fresh identity: --linked (overlay on a template, the default for templates) or --full")
    .option("--linked", "qcow2 overlay on the template's disks")
    .option("--full", "an independent copy")
    .option("--from-snapshot <snapshot>", "start from that snapshot's disk state")
    .option("--purpose <text>", "what the clone is for (default: the source's)")
    .option("--approver <name>", "who approved it (default: the source's approver)")
    .option("--expires <date>", "expiry: YYYY-MM-DD (end of day, UTC) or ISO time (default: the source's)")
    .option("--force", "clone from a snapshot below the source's security floor (needs --reason)")
    .option("--reason <text>", "why the forced clone is needed (recorded)")
    .option("--json", "machine-readable output")
    .action(async (source: string, name: string, o: { linked?: boolean; full?: boolean; fromSnapshot?: string; purpose?: string; approver?: string; expires?: string; force?: boolean; reason?: string; json?: boolean }) => {
      if (o.linked && o.full) throw new ApiError("VIGIL_BAD_REQUEST", "Use either --linked or --full", 0, "mode");
      const body = {
        name,
        ...(o.linked ? { mode: "linked" } : o.full ? { mode: "full" } : {}),
        ...(o.fromSnapshot ? { fromSnapshot: o.fromSnapshot } : {}),
        ...(o.purpose ? { purpose: o.purpose } : {}),
        ...(o.approver ? { approver: o.approver } : {}),
        ...(o.expires ? { expiresAt: o.expires } : {}),
        ...(o.force ? { force: true } : {}),
        ...(o.reason !== undefined ? { reason: o.reason } : {}),
      };
      const v = await withProgress(`Cloning ${source}`, (rid) => call<Vm>("POST", vmPath(source, "/clone"), body, undefined, { requestId: rid }));
      if (o.json) return printJson(v);
      process.stdout.write(`Cloned ${source} → ${v.name} (${(v.lineage as { linked?: boolean }).linked ? "linked" : "full"}, vmgenid ${v.vmgenid})\n`);
    });

  vm.command("export <name>")
    .description("Write a VM as one signed .vigil bundle")
    .requiredOption("-o, --output <file>", "the bundle file to write")
    .option("--with-snapshots", "include the snapshot tree")
    .option("--memory", "capture the running VM's memory too (it resumes where it was after import)")
    .option("--valid-until <time>", "ISO time after which every importer refuses the bundle")
    .action(async (name: string, o: { output: string; withSnapshots?: boolean; memory?: boolean; validUntil?: string }) => {
      const out = writableOutput("-o", o.output);
      const requestId = randomUUID();
      const bytes = await withProgress(`Exporting ${name}`, () =>
        download(vmPath(name, "/export"), { withSnapshots: o.withSnapshots ?? false, memory: o.memory ?? false, ...(o.validUntil !== undefined ? { expiresAt: o.validUntil } : {}) }, out, { requestId, headers: { "x-vigil-output": out }, onBytes: (d, t) => progressLine(`Writing ${basename(out)}`, d, t) }),
      );
      clearLine();
      process.stdout.write(`Exported ${name} to ${out} (${(bytes / 1048576).toFixed(1)} MiB)\n`);
    });

  vm.command("import <file>")
    .description("Create a VM from a .vigil bundle; verified completely (signer, sizes, hashes) before anything is created")
    .option("--name <name>", "name of the new VM (default: the name in the bundle)")
    .option("--purpose <text>", "what the VM is for (default: the purpose in the bundle)")
    .option("--approver <name>", "who approved it (never taken from the bundle)")
    .option("--expires <date>", "expiry: YYYY-MM-DD (end of day, UTC) or ISO time (never taken from the bundle)")
    .option("--allow-replay", "import a bundle this site imported before (recorded in the audit log)")
    .option("--json", "machine-readable output")
    .action(async (file: string, o: { name?: string; purpose?: string; approver?: string; expires?: string; allowReplay?: boolean; json?: boolean }) => {
      const abs = resolvePath(file);
      const query = new URLSearchParams({
        source: abs,
        ...(o.name ? { name: o.name } : {}),
        ...(o.purpose ? { purpose: o.purpose } : {}),
        ...(o.approver ? { approver: o.approver } : {}),
        ...(o.expires ? { expiresAt: o.expires } : {}),
        ...(o.allowReplay ? { allowReplay: "true" } : {}),
      });
      const v = await withProgress(`Importing ${basename(abs)}`, (rid) => upload<Vm>(`/v1/vms/import?${query.toString()}`, abs, { requestId: rid, onBytes: (d, t) => progressLine("Uploading", d, t) }));
      clearLine();
      if (o.json) return printJson(v);
      process.stdout.write(`Imported ${basename(abs)} as VM ${v.name} (${v.id as string})\n`);
    });

  vm.command("generations <name>")
    .description("The VM's generation tree: every fork (revert, restore, clone, import) with its vmgenid")
    .option("--json", "machine-readable output")
    .action(async (name: string, o: { json?: boolean }) => {
      const r = await call<{ current: number; generations: Array<Record<string, unknown>> }>("GET", vmPath(name, "/generations"));
      if (o.json) return printJson(r);
      printTable(
        r.generations.map((g) => ({ ...g, mark: g.generation === r.current ? "*" : "" })),
        [
          ["mark", ""],
          ["generation", "GEN"],
          ["parentGeneration", "PARENT"],
          ["reason", "REASON"],
          ["snapshot", "SNAPSHOT"],
          ["vmgenid", "VMGENID"],
          ["reseed", "RESEED"],
          ["createdBy", "BY"],
          ["createdAt", "AT"],
        ],
      );
    });

  vm.command("floor <name>")
    .description("Show or raise the VM's security floor: facts a revert may not go below (patchLevel, signatures, credentialEpoch, firewallPolicy, ...)")
    .option("--set <fact=value>", "raise a fact (repeatable)", collect)
    .option("--force", "allow lowering a fact (needs --reason)")
    .option("--reason <text>", "why")
    .option("--json", "machine-readable output")
    .action(async (name: string, o: { set?: string[]; force?: boolean; reason?: string; json?: boolean }) => {
      let floor: Record<string, string>;
      if (o.set) {
        const facts = Object.fromEntries(
          o.set.map((kv) => {
            const i = kv.indexOf("=");
            if (i <= 0) throw new ApiError("VIGIL_BAD_REQUEST", `Invalid --set ${JSON.stringify(kv)}: use FACT=VALUE`, 0, "set");
            return [kv.slice(0, i), kv.slice(i + 1)];
          }),
        );
        floor = (await call<{ floor: Record<string, string> }>("PUT", vmPath(name, "/floor"), { facts, force: o.force ?? false, ...(o.reason ? { reason: o.reason } : {}) })).floor;
      } else {
        floor = (await call<{ floor: Record<string, string> }>("GET", vmPath(name, "/vtime"))).floor;
      }
      if (o.json) return printJson(floor);
      if (Object.keys(floor).length === 0) process.stdout.write(`VM ${name} has no security floor\n`);
      for (const [k, v] of Object.entries(floor)) process.stdout.write(`${k.padEnd(18)} ${v}\n`);
    });

  const vtime = program.command("vtime").description("The extra-VM monotonic store: state that never rolls back with the VM");
  vtime
    .command("show <vm>")
    .description("Counters and record streams of a VM's store, its namespace and floor")
    .option("--json", "machine-readable output")
    .action(async (vmName: string, o: { json?: boolean }) => {
      const r = await call<{ namespace: string; floor: Record<string, string>; counters: Array<Record<string, unknown>>; streams: Array<Record<string, unknown>>; problems: string[] }>("GET", vmPath(vmName, "/vtime"));
      if (o.json) return printJson(r);
      process.stdout.write(`namespace ${r.namespace}\n`);
      const floor = Object.entries(r.floor);
      if (floor.length === 0) process.stdout.write("floor: none\n");
      for (const [fact, value] of floor) process.stdout.write(`floor: ${fact} ${value}\n`);
      printTable(r.counters, [
        ["name", "COUNTER"],
        ["value", "VALUE"],
        ["updatedAt", "UPDATED"],
      ]);
      if (r.streams.length) printTable(r.streams, [["stream", "STREAM"], ["records", "RECORDS"]]);
      for (const p of r.problems) process.stdout.write(`problem: ${p}\n`);
    });
  vtime
    .command("link <vm>")
    .description("Let VM share another VM's store (a clone continuing its parent's counters)")
    .requiredOption("--to <source>", "the VM whose store to share")
    .action(async (vmName: string, o: { to: string }) => {
      const r = await call<{ namespace: string }>("POST", vmPath(vmName, "/vtime/link"), { source: o.to });
      process.stdout.write(`VM ${vmName} now shares the store of ${o.to} (namespace ${r.namespace})\n`);
    });

  // ---- snapshots ----
  const snapshot = program.command("snapshot").description("Snapshots: a tree per VM");
  snapshot
    .command("create <vm> <name>")
    .description("Take a snapshot: disk-only (guest filesystem frozen when its agent answers), or --memory")
    .option("--memory", "include RAM and device state (running VM)")
    .option("--single-use", "with --memory: may be resumed only once")
    .option("-d, --description <text>", "what it is")
    .option("--json", "machine-readable output")
    .action(async (vmName: string, name: string, o: { memory?: boolean; singleUse?: boolean; description?: string; json?: boolean }) => {
      const s = await withProgress(`Snapshot ${vmName}/${name}`, (rid) =>
        call<Record<string, unknown>>("POST", vmPath(vmName, "/snapshots"), { name, memory: o.memory ?? false, singleUse: o.singleUse ?? false, ...(o.description ? { description: o.description } : {}) }, undefined, { requestId: rid }),
      );
      if (o.json) return printJson(s);
      process.stdout.write(`Snapshot ${name} of ${vmName} taken (${s.kind as string}${s.singleUse ? ", single-use" : ""})\n`);
    });
  snapshot
    .command("list <vm>")
    .description("Draw the VM's snapshot tree")
    .option("--json", "machine-readable output")
    .action(async (vmName: string, o: { json?: boolean }) => {
      type Node = { name: string; parent: string | null; kind: string; createdAt: string; createdBy: string; current: boolean; singleUse: boolean; resumedCount: number; vmStateSize: number };
      const r = await call<{ snapshots: Node[] }>("GET", vmPath(vmName, "/snapshots"));
      if (o.json) return printJson(r);
      const childrenOf = (parent: string | null) => r.snapshots.filter((s) => s.parent === parent);
      const draw = (nodes: Node[], prefix: string) => {
        nodes.forEach((n, i) => {
          const last = i === nodes.length - 1;
          const flags = [n.kind, n.singleUse ? `single-use, resumed ${n.resumedCount}×` : "", n.vmStateSize ? `${(n.vmStateSize / 1048576).toFixed(1)} MiB state` : ""].filter(Boolean).join(", ");
          process.stdout.write(`${prefix}${last ? "└─" : "├─"} ${n.name}${n.current ? "  ← you are here" : ""}  (${flags}; ${n.createdBy}, ${n.createdAt})\n`);
          draw(childrenOf(n.name), prefix + (last ? "   " : "│  "));
        });
      };
      if (r.snapshots.length === 0) process.stdout.write(`VM ${vmName} has no snapshots\n`);
      draw(childrenOf(null), "");
    });
  snapshot
    .command("delete <vm> <name>")
    .description("Delete a snapshot; its children move up to its parent")
    .action(async (vmName: string, name: string) => {
      await withProgress(`Deleting ${vmName}/${name}`, (rid) => call("DELETE", vmPath(vmName, `/snapshots/${enc(name)}`), undefined, undefined, { requestId: rid }));
      process.stdout.write(`Snapshot ${name} of ${vmName} deleted\n`);
    });
  snapshot
    .command("revert <vm> <name>")
    .description("Go back to a snapshot as a fork: new vmgenid, generation+1, fresh QEMU process")
    .option("--force", "revert even below the VM's security floor (needs --reason; runs the re-apply hook)")
    .option("--reason <text>", "why a forced revert is needed")
    .option("--unsafe-keep-vmgenid", "admins only, for demonstrations: resume WITHOUT a new vmgenid, so the guest does not reseed")
    .option("--json", "machine-readable output")
    .action(async (vmName: string, name: string, o: { force?: boolean; reason?: string; unsafeKeepVmgenid?: boolean; json?: boolean }) => {
      if (o.reason !== undefined && !o.force) throw new ApiError("VIGIL_BAD_REQUEST", "--reason is only meaningful with --force (a forced revert below the security floor)", 0, "reason");
      const r = await withProgress(`Reverting ${vmName} to ${name}`, (rid) =>
        call<{ vm: Vm; generation: number; forced: boolean }>("POST", vmPath(vmName, `/snapshots/${enc(name)}/revert`), { force: o.force ?? false, unsafeKeepVmgenid: o.unsafeKeepVmgenid ?? false, ...(o.reason ? { reason: o.reason } : {}) }, undefined, { requestId: rid }),
      );
      if (o.json) return printJson(r);
      process.stdout.write(`VM ${vmName} reverted to ${name}: generation ${r.generation}, vmgenid ${r.vm.vmgenid}, ${r.vm.state}${r.forced ? " (forced below the security floor)" : ""}\n`);
    });

  // ---- trust ----
  const trust = program.command("trust").description("Keys whose signed bundles this site imports");
  trust
    .command("add <pem-file>")
    .description("Trust another site's bundle-signing public key (PEM)")
    .requiredOption("--name <name>", "whose key it is")
    .action(async (file: string, o: { name: string }) => {
      inputFile(file, "<pem-file>");
      const k = await call<{ keyId: string }>("POST", "/v1/trust", { name: o.name, publicKey: readFileSync(file, "utf8") });
      process.stdout.write(`Trusting key ${k.keyId} (${o.name})\n`);
    });
  trust
    .command("list")
    .description("List trusted keys (the site's own first)")
    .option("--json", "machine-readable output")
    .action(async (o: { json?: boolean }) => {
      const { keys } = await call<{ keys: Array<Record<string, unknown>> }>("GET", "/v1/trust");
      if (o.json) return printJson(keys);
      printTable(keys, [
        ["keyId", "KEY ID"],
        ["name", "NAME"],
        ["addedBy", "ADDED BY"],
        ["addedAt", "ADDED"],
      ]);
    });
  trust
    .command("show-site")
    .description("Print this site's public key (give it to sites that import your bundles)")
    .action(async () => {
      const { keys } = await call<{ keys: Array<{ site: boolean; publicKey: string }> }>("GET", "/v1/trust");
      process.stdout.write(keys.find((k) => k.site)?.publicKey ?? "");
    });
  trust
    .command("remove <key-id>")
    .description("Stop trusting a key")
    .action(async (keyId: string) => {
      await call("DELETE", `/v1/trust/${enc(keyId)}`);
      process.stdout.write(`No longer trusting ${keyId}\n`);
    });

  // ---- introspection ----
  type Finding = { check: string; severity: string; message: string; evidence: Record<string, unknown> };
  type Watch = { vm: string; intervalMs: number; policy: string; guestViewEvery: number; noNewModules?: boolean; status: string; sweeps: number; lastSweepAt: string | null; lastSweepMs: number | null; activeFindings: number; baseline: { source: string; takenAt: string } | null; problem: string | null };
  const evidenceLine = (e: Record<string, unknown>) =>
    ["address", "symbol", "expected", "found", "pid", "comm", "module", "vector"]
      .filter((k) => e[k] !== undefined)
      .map((k) => `${k}=${typeof e[k] === "string" ? (e[k] as string) : JSON.stringify(e[k])}`)
      .join(" ");
  program
    .command("introspect <vm>")
    .description("One sweep of the guest kernel from outside (needs the introspect grant): findings and the VMI view of processes and modules")
    .option("--carve", "also carve all of guest RAM for task and module structures (slower)")
    .option("--json", "machine-readable output")
    .action(async (name: string, o: { carve?: boolean; json?: boolean }) => {
      type Report = {
        sweep: number;
        findings: Finding[];
        processes: Array<{ pid: number; tgid: number; comm: string; state: string; sources: string[]; inGuestView?: boolean }>;
        modules: Array<{ name: string; sources: string[]; inGuestView?: boolean }>;
        kernel: { release: string; buildId: string | null; kaslrShift: string };
        durationMs: number;
        totalMs: number;
        baseline: { source: string; takenAt: string };
        guestView: { processes: number; modules: number | null } | null;
      };
      const r = await call<Report>("POST", vmPath(name, "/introspect"), { carve: o.carve ?? false });
      if (o.json) return printJson(r);
      const alarms = r.findings.filter((f) => f.severity !== "info");
      const leaders = r.processes.filter((p) => p.pid === p.tgid);
      process.stdout.write(`VM ${name}: kernel ${r.kernel.release} (build ${r.kernel.buildId ?? "unknown"}, KASLR shift ${r.kernel.kaslrShift})\n`);
      process.stdout.write(`sweep ${r.sweep} took ${r.durationMs.toFixed(1)} ms (${r.totalMs.toFixed(0)} ms with the guest's own view); baseline: ${r.baseline.source} at ${r.baseline.takenAt}\n`);
      process.stdout.write(`processes: ${leaders.length} (${r.processes.length} tasks)${r.guestView ? `, guest ps lists ${r.guestView.processes}` : ", guest view not taken"}; modules: ${r.modules.map((m) => m.name).join(" ") || "none"}\n`);
      if (alarms.length === 0) process.stdout.write("findings: none\n");
      else {
        process.stdout.write(`findings: ${alarms.length}\n`);
        printTable(
          alarms.map((f) => ({ ...f, where: evidenceLine(f.evidence) })),
          [
            ["severity", "SEVERITY"],
            ["check", "CHECK"],
            ["message", "MESSAGE"],
            ["where", "EVIDENCE"],
          ],
        );
      }
    });

  program
    .command("watch [vm]")
    .description("Watch a VM continuously (sweeps in the daemon, findings in the audit log) and follow its findings until Ctrl-C; the watch keeps running")
    .option("--interval <duration>", "time between sweeps, 250ms..1h, e.g. 1s, 500ms, 2m (a new watch: 1s; a running one keeps its own)", parseInterval)
    .option("--policy <policy>", "on a new serious finding: alert, pause (contain), or snapshot-and-pause (keep evidence) (a new watch: alert; a running one keeps its own)", parsePolicy)
    .option("--guest-view-every <n>", "ask the guest for its own ps every Nth sweep, 1..3600 (the lie detector; costs guest CPU) (a new watch: 1; a running one keeps its own)", parseGuestViewEvery)
    // --new-modules first: then --no-new-modules does not make the option default to true (unset keeps the watch's value).
    .option("--new-modules", "lift the no-new-modules policy (a new watch: modules may be loaded)")
    .option("--no-new-modules", 'a "no new modules" policy: any module loaded after the boot\'s baseline is a high finding (contained by --policy)')
    .option("--stop", "stop the VM's watch")
    .option("--list", "list the watches you may see")
    .option("--no-follow", "start or change the watch, then return")
    .option("--json", "machine-readable output (one JSON record per line when following)")
    .action(async (name: string | undefined, o: { interval?: number; policy?: string; guestViewEvery?: number; newModules?: boolean; stop?: boolean; list?: boolean; follow: boolean; json?: boolean }) => {
      if (o.list) {
        const { watches } = await call<{ watches: Watch[] }>("GET", "/v1/watches");
        if (o.json) return printJson(watches);
        printTable(
          watches.map((w) => ({ ...w, interval: `${w.intervalMs / 1000}s`, last: w.lastSweepAt ? `${w.lastSweepAt} (${w.lastSweepMs?.toFixed(1)} ms)` : "-", note: w.problem ?? "" })),
          [
            ["vm", "VM"],
            ["status", "STATUS"],
            ["interval", "INTERVAL"],
            ["policy", "POLICY"],
            ["sweeps", "SWEEPS"],
            ["last", "LAST SWEEP"],
            ["activeFindings", "ACTIVE"],
            ["note", "NOTE"],
          ],
        );
        return;
      }
      if (!name) throw new ApiError("VIGIL_BAD_REQUEST", "Name the VM to watch (or use --list)", 0, "vm");
      if (o.stop) {
        const r = await call<{ stopped: boolean }>("DELETE", vmPath(name, "/watch"));
        if (o.json) return printJson(r);
        process.stdout.write(r.stopped ? `Stopped watching ${name}\n` : `${name} was not watched\n`);
        return;
      }
      // Merge into the current watch: an option not given keeps its value; only a new watch gets the defaults.
      const existing = (await call<{ watch: Watch | null }>("GET", vmPath(name, "/findings?limit=1"))).watch;
      const change = watchBody({ ...(o.interval !== undefined ? { intervalMs: o.interval } : {}), ...(o.policy !== undefined ? { policy: o.policy } : {}), ...(o.guestViewEvery !== undefined ? { guestViewEvery: o.guestViewEvery } : {}), ...(o.newModules !== undefined ? { noNewModules: !o.newModules } : {}) }, existing);
      const watch = change ? await call<Watch>("PUT", vmPath(name, "/watch"), change) : existing!;
      const vm = await call<{ id: string }>("GET", vmPath(name));
      if (!o.follow) {
        if (o.json) return printJson(watch);
        process.stdout.write(`Watching ${name} every ${watch.intervalMs / 1000}s (policy ${watch.policy}${watch.noNewModules ? ", no new modules" : ""}, ${watch.status})\n`);
        return;
      }
      process.stderr.write(`Watching ${name} every ${watch.intervalMs / 1000}s (policy ${watch.policy}, ${watch.status}). Findings follow; Ctrl-C stops following, the watch keeps running (vigil watch ${name} --stop ends it).\n`);
      await events("/v1/events", (event, data) => {
        if (event !== "audit") return;
        const r = JSON.parse(data) as { time: string; action: string; result: string; target: { id: string | null }; details: Record<string, unknown> };
        if (r.target.id !== vm.id || !r.action.startsWith("ids.")) return;
        if (o.json) return void process.stdout.write(data + "\n");
        const d = r.details;
        if (r.action === "ids.finding") process.stdout.write(`${r.time}  ${String(d.severity).toUpperCase().padEnd(8)} ${String(d.check).padEnd(26)} ${String(d.message)}  ${evidenceLine((d.evidence ?? {}) as Record<string, unknown>)}\n`);
        else if (r.action === "ids.finding-change") process.stdout.write(`${r.time}  ${(d.change === "cleared" ? "CLEARED" : "CHANGED").padEnd(8)} ${String(d.check).padEnd(26)} ${String(d.message)}  ${evidenceLine((d.evidence ?? {}) as Record<string, unknown>)}\n`);
        else if (r.action === "ids.policy") process.stdout.write(`${r.time}  POLICY   ${String(d.policy)}: ${r.result === "ok" ? `paused ${String(d.paused)}${d.snapshot ? `, snapshot ${String(d.snapshot)}` : ""}` : `failed: ${String(d.error)}`}\n`);
        else process.stdout.write(`${r.time}  ${r.action}  ${JSON.stringify(d)}\n`);
      });
    });

  program
    .command("findings <vm>")
    .description("The alarms of a VM's watch: active ones, cleared ones (distinctly), each with every change, and the newest new-finding records")
    .option("-n, --limit <n>", "how many records", positiveInt("--limit"), 20)
    .option("--json", "machine-readable output (every alarm with its full history)")
    .action(async (name: string, o: { limit: number; json?: boolean }) => {
      type Change = { sweep: number; at: string; change: string; severity: string; message: string; what?: string[] };
      type Alarm = { state: "active" | "cleared"; finding: Finding; firstSweep: number; lastSeenSweep: number; raisedAt: string; clearedAt: string | null; history: Change[]; omittedChanges: number };
      const r = await call<{ watch: Watch | null; active: Finding[]; alarms?: Alarm[]; recent: Array<Finding & { time: string; sweep: number | null }> }>("GET", vmPath(name, `/findings?limit=${o.limit}`));
      if (o.json) return printJson(r);
      const alarms = r.alarms ?? [];
      const active = alarms.filter((a) => a.state === "active");
      const cleared = alarms.filter((a) => a.state === "cleared");
      process.stdout.write(r.watch ? `Watch: ${r.watch.status}, every ${r.watch.intervalMs / 1000}s, policy ${r.watch.policy}${r.watch.noNewModules ? ", no new modules" : ""}, ${r.watch.sweeps} sweeps, ${r.active.length} active, ${cleared.length} cleared\n` : `${name} is not watched\n`);
      const history = (a: Alarm) => [...(a.omittedChanges > 0 ? [`(${a.omittedChanges} earlier changes left out)`] : []), ...a.history.map((h) => `sweep ${h.sweep} ${h.change}${h.what ? ` (${h.what.join(", ")})` : ""}: ${h.severity}`)].join("; ");
      for (const [title, list] of [["ACTIVE", active], ["CLEARED", cleared]] as const) {
        if (list.length === 0) continue;
        process.stdout.write(`\n${title} ALARMS (${list.length})\n`);
        printTable(
          list.map((a) => ({ ...a.finding, since: a.raisedAt, until: a.clearedAt ?? "", changes: history(a), where: evidenceLine(a.finding.evidence) })),
          [
            ["severity", "SEVERITY"],
            ["check", "CHECK"],
            ["message", "MESSAGE"],
            ["where", "EVIDENCE"],
            ["since", "RAISED"],
            ...(title === "CLEARED" ? ([["until", "CLEARED"]] as [string, string][]) : []),
            ["changes", "HISTORY"],
          ],
        );
      }
      process.stdout.write(`\nNEW-FINDING RECORDS (audit log, newest ${r.recent.length})\n`);
      printTable(
        r.recent.map((f) => ({ ...f, where: evidenceLine(f.evidence) })),
        [
          ["time", "TIME"],
          ["sweep", "SWEEP"],
          ["severity", "SEVERITY"],
          ["check", "CHECK"],
          ["message", "MESSAGE"],
          ["where", "EVIDENCE"],
        ],
      );
    });

  // ---- users and groups ----
  const user = program.command("user").description("Users, roles and tokens");
  user
    .command("add <name>")
    .description("Add a user; prints its first token once")
    .option("--role <role>", "admin | operator | owner | auditor (repeatable)", collect)
    .option("--introspect", "may read guest memory (never implied by a role)")
    .option("--json", "machine-readable output")
    .action(async (name: string, o: { role?: string[]; introspect?: boolean; json?: boolean }) => {
      const r = await call<{ user: Record<string, unknown>; token: string }>("POST", "/v1/users", { name, roles: o.role ?? [], introspect: o.introspect ?? false });
      if (o.json) return printJson(r);
      process.stdout.write(`Added user ${name}. Token (shown once, store it now):\n${r.token}\n`);
    });
  user
    .command("list")
    .description("List users")
    .option("--json", "machine-readable output")
    .action(async (o: { json?: boolean }) => {
      const { users } = await call<{ users: Array<Record<string, unknown>> }>("GET", "/v1/users");
      if (o.json) return printJson(users);
      printTable(
        users.map((u) => ({ ...u, roles: (u.roles as string[]).join(","), groups: (u.groups as string[]).join(",") })),
        [
          ["name", "NAME"],
          ["roles", "ROLES"],
          ["introspect", "INTROSPECT"],
          ["disabled", "DISABLED"],
          ["groups", "GROUPS"],
          ["createdAt", "CREATED"],
        ],
      );
    });
  user
    .command("token <name>")
    .description("Issue a new token for a user (shown once), or --revoke all of them")
    .option("--label <label>", "a name for the token", "cli")
    .option("--expires <iso>", "expiry time (ISO 8601)")
    .option("--revoke", "revoke every token of the user instead")
    .option("--json", "machine-readable output")
    .action(async (name: string, o: { label: string; expires?: string; revoke?: boolean; json?: boolean }) => {
      if (o.revoke) {
        const r = await call<{ revoked: number }>("DELETE", `/v1/users/${enc(name)}/tokens`);
        if (o.json) return printJson(r);
        process.stdout.write(`Revoked ${r.revoked} token(s) of ${name}\n`);
        return;
      }
      const r = await call<{ token: string }>("POST", `/v1/users/${enc(name)}/tokens`, { name: o.label, ...(o.expires ? { expiresAt: o.expires } : {}) });
      if (o.json) return printJson(r);
      process.stdout.write(`${r.token}\n`);
    });
  const tokenCmd = program.command("token").description("Your API tokens (or another user's with --user)");
  const tokenOwner = async (o: { user?: string }) => o.user ?? (await call<{ name: string }>("GET", "/v1/whoami")).name;
  tokenCmd
    .command("list")
    .description("List tokens: id, label, expiry, last use, revoked, the token each was minted with (never the secret)")
    .option("--user <name>", "another user's tokens (needs user.read)")
    .option("--json", "machine-readable output")
    .action(async (o: { user?: string; json?: boolean }) => {
      const { tokens } = await call<{ tokens: Array<Record<string, unknown>> }>("GET", `/v1/users/${enc(await tokenOwner(o))}/tokens`);
      if (o.json) return printJson(tokens);
      printTable(tokens.map((t) => ({ ...t, expiresAt: t.expiresAt ?? "never", lastUsedAt: t.lastUsedAt ?? "-", parentId: t.parentId ?? "-" })), [
        ["id", "ID"],
        ["name", "LABEL"],
        ["createdAt", "CREATED"],
        ["expiresAt", "EXPIRES"],
        ["lastUsedAt", "LAST USED"],
        ["revoked", "REVOKED"],
        ["parentId", "MINTED WITH"],
      ]);
    });
  tokenCmd
    .command("revoke <id>")
    .description("Revoke one token and every token minted with it")
    .option("--user <name>", "another user's token (needs user.manage)")
    .option("--json", "machine-readable output")
    .action(async (id: string, o: { user?: string; json?: boolean }) => {
      const r = await call<{ revoked: number }>("DELETE", `/v1/users/${enc(await tokenOwner(o))}/tokens/${enc(id)}`);
      if (o.json) return printJson(r);
      process.stdout.write(`Revoked ${r.revoked} token(s)\n`);
    });
  user
    .command("set <name>")
    .description("Change a user's roles, introspection grant or disabled flag")
    .option("--role <role>", "replace the roles (repeatable)", collect)
    .option("--introspect", "grant introspection")
    .option("--no-introspect", "revoke introspection")
    .option("--disable", "disable the user")
    .option("--enable", "enable the user")
    .option("--quota <key=value>", "quota for VMs the user owns, replacing the site default: vms=N, memoryMiB=N or diskMiB=N (repeatable; replaces every override)", collect)
    .option("--default-quotas", "drop the user's quota overrides (the site defaults apply)")
    .option("--json", "machine-readable output")
    .action(async (name: string, o: { role?: string[]; introspect?: boolean; disable?: boolean; enable?: boolean; quota?: string[]; defaultQuotas?: boolean; json?: boolean }) => {
      const change: Record<string, unknown> = {};
      if (o.role) change.roles = o.role;
      if (o.defaultQuotas) change.quotas = null;
      if (o.quota) {
        const quotas: Record<string, number> = {};
        for (const kv of o.quota) {
          const m = /^(vms|memoryMiB|diskMiB)=(\d{1,10})$/.exec(kv);
          if (!m) throw new ApiError("VIGIL_BAD_REQUEST", `Invalid --quota ${JSON.stringify(kv)}: use vms=N, memoryMiB=N or diskMiB=N`, 0, "quota");
          quotas[m[1]!] = Number(m[2]);
        }
        change.quotas = quotas;
      }
      if (o.introspect !== undefined) change.introspect = o.introspect;
      if (o.disable) change.disabled = true;
      if (o.enable) change.disabled = false;
      if (Object.keys(change).length === 0) {
        throw new ApiError("VIGIL_BAD_REQUEST", `Nothing to change for user ${JSON.stringify(name)}: give --role, --introspect, --no-introspect, --disable or --enable`, 0, "user");
      }
      const r = await call<Record<string, unknown>>("PATCH", `/v1/users/${enc(name)}`, change);
      if (o.json) return printJson(r);
      process.stdout.write(`User ${name} updated\n`);
    });

  const group = program.command("group").description("Groups (VMs can be owned by a group)");
  group
    .command("add <name>")
    .description("Add a group")
    .action(async (name: string) => {
      await call("POST", "/v1/groups", { name });
      process.stdout.write(`Added group ${name}\n`);
    });
  group
    .command("list")
    .description("List groups and members")
    .option("--json", "machine-readable output")
    .action(async (o: { json?: boolean }) => {
      const { groups } = await call<{ groups: Array<{ name: string; members: string[] }> }>("GET", "/v1/groups");
      if (o.json) return printJson(groups);
      printTable(groups.map((g) => ({ name: g.name, members: g.members.join(",") })), [
        ["name", "NAME"],
        ["members", "MEMBERS"],
      ]);
    });
  for (const [cmd, method, verb] of [
    ["add-member", "PUT", "added to"],
    ["remove-member", "DELETE", "removed from"],
  ] as const) {
    group
      .command(`${cmd} <group> <user>`)
      .description(`${cmd === "add-member" ? "Add a user to" : "Remove a user from"} a group`)
      .action(async (g: string, u: string) => {
        await call(method, `/v1/groups/${enc(g)}/members/${enc(u)}`);
        process.stdout.write(`${u} ${verb} ${g}\n`);
      });
  }

  // ---- audit ----
  const audit = program.command("audit").description("The tamper-evident audit log");
  audit
    .command("verify")
    .description("Verify the hash chain, Merkle tree, signed checkpoints and head; names the first bad record. --since proves (consistency proof, checked here) that the log extends an older head")
    .option("--since <file>", "an older head file (audit-head.json, a witness line) or an older export")
    .option("--key <pem>", "with --since: the site's public key from a trusted place (default: the one the daemon reports)")
    .option("--json", "machine-readable output")
    .action(async (o: { json?: boolean; since?: string; key?: string }) => {
      const r = await call<{ ok: boolean; records: number; checkpoints: number; firstBad?: { seq: number; reason: string } }>("GET", "/v1/audit/verify");
      let since: { ok: boolean; message: string } | undefined;
      if (o.since) since = await checkSince(o.since, o.key);
      if (o.json) printJson(since ? { ...r, since } : r);
      else {
        if (r.ok) process.stdout.write(`OK: ${plural(r.records, "record")}, ${plural(r.checkpoints, "signed checkpoint")}, chain intact\n`);
        else process.stdout.write(`TAMPERED: first bad record ${r.firstBad?.seq}: ${r.firstBad?.reason}\n`);
        if (since) process.stdout.write(`${since.ok ? "OK" : "TAMPERED"}: ${since.message}\n`);
      }
      if (!r.ok || (since && !since.ok)) process.exitCode = EXIT.conflict;
    });
  audit
    .command("prove")
    .description("An RFC 9162 inclusion proof that record SEQ is in the tree of the newest signed head; anyone checks it with the public key alone (vigil audit check-proof, scripts/verify-audit-export.mjs --proof)")
    .argument("<seq>", "the record's seq", positiveInt("seq"))
    .option("-o, --output <file>", "write the proof (JSON) to a file")
    .option("--json", "print the proof as JSON")
    .action(async (seq: number, o: { json?: boolean; output?: string }) => {
      const p = await call<{ record: { seq: number; action: string; actor: string }; treeSize: number; path: string[]; head: { rootHash: string; time: string } }>("GET", `/v1/audit/proof/${seq}`);
      if (o.output) writeFileSync(writableOutput("-o", o.output), JSON.stringify(p, null, 2) + "\n", { mode: 0o644 });
      if (o.json) return printJson(p);
      process.stdout.write(`record ${p.record.seq} (${p.record.action} by ${p.record.actor}) is leaf ${p.record.seq - 1} of ${p.treeSize}; audit path of ${plural(p.path.length, "hash", "hashes")}; root ${p.head.rootHash} signed at ${p.head.time}\n`);
    });
  audit
    .command("check-proof")
    .description("Check a proof from `vigil audit prove --json` with the site's public key alone (no daemon needed)")
    .argument("<file>", "the proof (JSON)")
    .requiredOption("--key <pem>", "the site's public key (site-ed25519.pub.pem) from a trusted place")
    .action(async (file: string, o: { key: string }) => {
      const { checkInclusionProof } = await import("../audit/proof-check.ts");
      const { key, keyId } = await publicKeyFrom(readFileSync(o.key, "utf8"));
      let doc: unknown;
      try {
        doc = JSON.parse(readFileSync(file, "utf8"));
      } catch {
        throw new ApiError("VIGIL_BAD_REQUEST", `${JSON.stringify(file)} is not a JSON proof`, 0);
      }
      const r = checkInclusionProof(doc, key, keyId);
      process.stdout.write(`${r.ok ? "OK" : "BAD"}: ${r.message}\n`);
      if (!r.ok) process.exitCode = EXIT.conflict;
    });
  audit
    .command("export")
    .description("Write the log as JSON lines that an outside tool can verify with the site's public key")
    .option("-o, --output <file>", "write to a file instead of stdout")
    .action(async (o: { output?: string }) => {
      if (!o.output) return stream("/v1/audit/export", (chunk) => void process.stdout.write(chunk));
      const path = writableOutput("-o", o.output);
      const file = createWriteStream(path, { mode: 0o600 });
      const failed = new Promise<never>((_, reject) =>
        file.on("error", (err: NodeJS.ErrnoException) => reject(new ApiError("VIGIL_HOST", `Cannot write -o ${JSON.stringify(o.output)}: ${err.code ?? err.message}`, 0, "-o"))),
      );
      await Promise.race([stream("/v1/audit/export", (chunk) => void file.write(chunk)), failed]);
      await Promise.race([new Promise<void>((r) => file.end(r)), failed]);
    });
  audit
    .command("tail")
    .description("The newest records; --follow streams new ones as they happen")
    .option("-n, --lines <n>", "how many", positiveInt("--lines"), 20)
    .option("-f, --follow", "keep streaming")
    .option("--json", "one JSON record per line")
    .action(async (o: { lines: number; follow?: boolean; json?: boolean }) => {
      const show = (r: Record<string, unknown> & { target: { kind: string; name: string | null } }) => {
        if (o.json) process.stdout.write(JSON.stringify(r) + "\n");
        else process.stdout.write(`${String(r.seq).padStart(6)} ${r.time as string} ${String(r.actor).padEnd(10)} ${String(r.action).padEnd(18)} ${String(r.result).padEnd(7)} ${r.target.kind}:${r.target.name ?? "-"} ${JSON.stringify(r.details).slice(0, 100)}\n`);
      };
      const { records } = await call<{ records: Array<Record<string, unknown> & { target: { kind: string; name: string | null } }> }>("GET", `/v1/audit?tail=true&limit=${o.lines}`);
      records.forEach(show);
      if (!o.follow) return;
      let behind: { lastSeq: number | null } | undefined;
      await events("/v1/events", (event, data) => {
        if (event === "audit") show(JSON.parse(data) as never);
        else if (event === "overflow") behind = JSON.parse(data) as { lastSeq: number | null };
      });
      if (behind) {
        // The daemon cut the stream because this terminal read too slowly: say so, never miss records silently.
        process.stderr.write(`vigil: this terminal fell too far behind the audit stream; records after ${behind.lastSeq ?? "the last shown"} were not shown (GET /v1/audit?after=${behind.lastSeq ?? 0})\n`);
        process.exitCode = 1;
      }
    });

  // ---- witness ----
  const witness = program.command("witness").description("An audit witness for another site's log");
  witness
    .command("serve")
    .description("Keep a site's signed tree heads (DIR/heads.jsonl, append-only), accepting only heads that extend the last (consistency proof), and co-sign them")
    .requiredOption("--dir <dir>", "where the witnessed heads and the witness key live")
    .requiredOption("--site-key <pem>", "the site's public key (site-ed25519.pub.pem)")
    .option("--listen <addr:port>", "address to listen on", "127.0.0.1:7451")
    .action(async (o: { dir: string; siteKey: string; listen: string }) => {
      mkdirSync(o.dir, { recursive: true, mode: 0o700 });
      const { runWitnessServer } = await hooks.loadDaemon();
      await runWitnessServer({ dir: o.dir, siteKeyPath: o.siteKey, listen: o.listen });
    });

  rejectUnknownCommands(program);
  return program;
}

interface AuditHealthView {
  ok: boolean;
  findings: string[];
  warnings?: string[];
  tamperRecords: Array<{ seq: number; time: string }>;
  head: { size: number; rootHash: string } | null;
  witnesses: Array<{ name: string; lastPublished: { size: number; time: string } | null; lastError: string | null }>;
}

async function publicKeyFrom(pem: string): Promise<{ key: import("node:crypto").KeyObject; keyId: string }> {
  const { createHash, createPublicKey } = await import("node:crypto");
  const key = createPublicKey(pem);
  return { key, keyId: createHash("sha256").update(key.export({ type: "spki", format: "der" })).digest("hex").slice(0, 16) };
}

/** `audit verify --since`: the consistency proof (or, for a pre-Merkle head, the record) checked here, not by the daemon. */
async function checkSince(file: string, keyFile: string | undefined): Promise<{ ok: boolean; message: string }> {
  const { checkExtends, readOldHead } = await import("../audit/proof-check.ts");
  let old;
  try {
    old = readOldHead(readFileSync(file, "utf8"));
  } catch (err) {
    throw new ApiError("VIGIL_BAD_REQUEST", `--since ${JSON.stringify(file)}: ${(err as Error).message}`, 0, "since");
  }
  const current = await call<{ head: import("../audit/chain.ts").TreeHead; publicKey: string }>("GET", "/v1/audit/head");
  const { key, keyId } = await publicKeyFrom(keyFile ? readFileSync(keyFile, "utf8") : current.publicKey);
  if (old.kind === "legacy") {
    const { records } = await call<{ records: import("../audit/chain.ts").HashedRecord[] }>("GET", `/v1/audit?after=${old.head.seq - 1}&limit=1`);
    return checkExtends(old, current.head, key, keyId, { record: records[0] });
  }
  if (old.head.size > current.head.size) return checkExtends(old, current.head, key, keyId, {});
  const proof = await call<{ path: string[]; head: import("../audit/chain.ts").TreeHead }>("GET", `/v1/audit/consistency?from=${old.head.size}`);
  return checkExtends(old, proof.head, key, keyId, { path: proof.path });
}

/**
 * An unknown command is one line and exit 2 (`vigil: unknown command "bogus" (see vigil --help)`), not the whole
 * help after commander's error; every command with subcommands answers so (`vigil vm bogus`). Listening for
 * "command:*" replaces commander's own unknown-command error; other usage errors keep their help.
 */
function rejectUnknownCommands(cmd: Command): void {
  if (cmd.commands.length === 0) return;
  const path: string[] = [];
  for (let c: Command | null = cmd; c; c = c.parent) path.unshift(c.name());
  cmd.on("command:*", (operands: string[]) => {
    const given = [...path.slice(1), operands[0] ?? ""].join(" ");
    throw new ApiError("VIGIL_BAD_REQUEST", `unknown command ${JSON.stringify(given)} (see ${path.join(" ")} --help)`, 0);
  });
  for (const sub of cmd.commands) rejectUnknownCommands(sub);
}

/** Prints one line for a failure and returns its documented exit code. */
function report(err: unknown): number {
  if (err instanceof CommanderError) return err.exitCode === 0 ? 0 : EXIT.badInput;
  if (err instanceof ApiError) {
    process.stderr.write(`vigil: ${err.message}\n`);
    return exitCodeFor(err.code);
  }
  const e = err as { code?: string; message?: string };
  if (typeof e.code === "string" && e.code.startsWith("VIGIL_")) {
    process.stderr.write(`vigil: ${e.message}\n`);
    return exitCodeFor(e.code);
  }
  process.stderr.write(`vigil: internal error: ${e.message ?? String(err)}\n`);
  return EXIT.internal;
}

let stdoutGuarded = false;
/** A reader that stops early (`vigil audit tail | head -1`) is a normal end of the output, not a failure. */
function endQuietlyOnEpipe(): void {
  if (stdoutGuarded) return;
  stdoutGuarded = true;
  process.stdout.on("error", (err: NodeJS.ErrnoException) => {
    if (err.code === "EPIPE") process.exit(EXIT.ok);
    process.stderr.write(`vigil: cannot write the output: ${err.code ?? err.message}\n`);
    process.exit(EXIT.internal);
  });
}

/** Runs the CLI and maps every failure to one documented exit code. */
export async function main(argv: string[], hooks: CliHooks): Promise<void> {
  endQuietlyOnEpipe();
  const program = buildProgram(hooks);
  try {
    await program.parseAsync(argv);
  } catch (err) {
    process.exitCode = report(err);
  }
}
