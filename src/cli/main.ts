/**
 * The `vigil` command: a thin client of the daemon's API. Each command turns its arguments into one API request
 * and prints the answer (a table, or JSON with --json). `vigil serve` is the exception: it runs the daemon.
 * Kept free of heavy imports so a command starts fast (the boot benchmark measures `vm start --wait`).
 * The commands live in ./commands/, one module per group; this file puts them together and runs them.
 */
import { Command } from "commander";
import { ApiError } from "./client.ts";
import { EXIT, report } from "./exit-codes.ts";
import type { CliContext, CliHooks, Registrar } from "./commands/common.ts";
import { registerAudit } from "./commands/audit.ts";
import { registerImages } from "./commands/image.ts";
import { registerNet } from "./commands/net.ts";
import { registerIntrospection } from "./commands/introspection.ts";
import { registerNetworkVis } from "./commands/network-vis.ts";
import { registerSnapshots } from "./commands/snapshot.ts";
import { registerRecordings } from "./commands/recording.ts";
import { registerSystem } from "./commands/system.ts";
import { registerTrust } from "./commands/trust.ts";
import { registerSession, registerUsers } from "./commands/users.ts";
import { registerVm } from "./commands/vm.ts";
import { registerVtime } from "./commands/vtime.ts";
import { registerPosture } from "./commands/posture.ts";
import { registerTasks } from "./commands/tasks.ts";
import { registerFirewall } from "./commands/fw.ts";
import { registerCa } from "./commands/ca.ts";
import { registerCluster } from "./commands/cluster.ts";

export type { CliHooks } from "./commands/common.ts";
export { writableOutput } from "./commands/common.ts";

/** The command groups in the order `vigil --help` lists them (commander lists commands as they are added). */
const REGISTRARS: Registrar[] = [registerSystem, registerSession, registerImages, registerVm, registerVtime, registerPosture, registerSnapshots, registerRecordings, registerTrust, registerIntrospection, registerUsers, registerAudit, registerTasks, registerNet, registerFirewall, registerNetworkVis, registerCa, registerCluster];

export function buildProgram(hooks: CliHooks): Command {
  const program = new Command("vigil")
    .description("Virtual infrastructure with security built in: QEMU VMs with ownership, audit and rollback-safe time.")
    .showHelpAfterError()
    .exitOverride();

  const ctx: CliContext = { hooks };
  for (const register of REGISTRARS) register(program, ctx);
  rejectUnknownCommands(program);
  return program;
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
