/** `vigil vm` commands that reach into the guest: the serial console and the guest agent (ps, info, ping, exec). */
import type { Command } from "commander";
import { call, upgrade } from "../client.ts";
import { printJson, printTable, sortNumerically, visibleControls } from "../output.ts";
import { positiveInt, vmPath } from "./common.ts";

/** Adds console, ps, info, ping and exec to the `vm` group. */
export function registerVmGuest(vm: Command): void {
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
      // A paused pipe on stdin (a script driving the console) would keep the process alive after it left.
      (stdin as { unref?: () => void }).unref?.();
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
