/**
 * A VM's serial console: the bridge to its live socket, the captured transcript (console.log), and the cap
 * that rotates that transcript while vigil is attached to the QEMU writing it.
 */
import { messageOf } from "../errors.ts";
import type { Logger } from "../log.ts";
import type { RequestContext } from "../auth/guard.ts";
import { ConsoleLogCap, DEFAULT_CONSOLE_LOG_MAX_BYTES, readConsoleTail } from "../host/console-log.ts";
import { assertAllowed } from "./state-machine.ts";
import type { VmCore } from "./vm-core.ts";

/** The captured serial console output (the last `maxBytes`). */
export async function consoleLog(core: VmCore, ctx: RequestContext, name: string, maxBytes: number): Promise<string> {
  const vm = await core.lookup(ctx, name, "vm.console-log");
  // The transcript of the interactive console shows what was typed and seen there: it needs what the console needs.
  await core.d.guard.authorize(ctx, { action: "vm.console-log", permission: "vm.console", target: core.target(vm), owner: vm.owner, readOnly: true });
  // Positioned reads of the last maxBytes of console.log.1 + console.log: never the whole file.
  return readConsoleTail(core.layout(vm).consoleLog, maxBytes).toString("utf8");
}

/** For the console bridge: authorizes, audits and returns the serial socket of a live VM. */
export async function openConsole(core: VmCore, ctx: RequestContext, name: string): Promise<string> {
  const vm = await core.lookup(ctx, name, "vm.console");
  return core.d.guard.run(ctx, { action: "vm.console", permission: "vm.console", target: core.target(vm), owner: vm.owner }, async () => {
    assertAllowed("console", vm.name, vm.state, "attach to the console of");
    return core.consoleRelays.get(vm.id) ?? core.layout(vm).serialSocket;
  });
}

/**
 * The console log cap of each adopted QEMU: one per VM, replaced when vigil attaches to a new QEMU of that VM,
 * stopped when that QEMU exits or vigil detaches (a cap outliving its QEMU would rotate a file nobody writes).
 */
export class ConsoleCaps {
  private readonly caps = new Map<string, ConsoleLogCap>();

  constructor(
    private readonly maxBytes: number | undefined,
    private readonly log: Logger,
  ) {}

  /** Starts capping `consoleLog` for the VM, stopping the cap of its previous QEMU if one is still there. */
  start(vm: { id: string; name: string }, consoleLog: string): ConsoleLogCap {
    this.caps.get(vm.id)?.stop();
    const cap = new ConsoleLogCap(consoleLog, this.maxBytes ?? DEFAULT_CONSOLE_LOG_MAX_BYTES, (err) => this.log.warn({ vm: vm.name, err: messageOf(err) }, "Cannot rotate the console log"));
    this.caps.set(vm.id, cap.start());
    return cap;
  }

  /** Stops `cap` (its QEMU exited); forgets it unless a newer QEMU of the VM already has its own. */
  release(vmId: string, cap: ConsoleLogCap): void {
    cap.stop();
    if (this.caps.get(vmId) === cap) this.caps.delete(vmId);
  }

  /** Stops every cap: vigil detaches from all QEMUs. */
  stopAll(): void {
    for (const cap of this.caps.values()) cap.stop();
    this.caps.clear();
  }
}
