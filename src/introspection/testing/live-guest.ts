/**
 * Test support for real guests run by a vigil daemon: the ATTACKER's handle on a VM's RAM memfd (opened
 * read-write from the host, as a root-level intruder on the host or a DMA-capable device could), with its own
 * read-only kernel model to find what to overwrite; and the guest's serial console as a shell (what
 * `vigil vm console` gives a person), to run workloads the guest agent's allow-list does not cover. Nothing in
 * vigil imports this file.
 */
import { closeSync } from "node:fs";
import type { Socket } from "node:net";
import { upgrade, type Target } from "../../cli/client.ts";
import { openGuestRam } from "../../host/guest-ram.ts";
import { guestRamBytes, type Accelerator } from "../../qemu/argv.ts";
import { buildKernelModel, type KernelModel } from "../kernel-model.ts";
import { FilePhysicalMemory, pcRamRegions } from "../physical-memory.ts";
import { RamFileWriter } from "./attacker.ts";

/** The attacker: a writable view of guest RAM and a model of the kernel in it (built from RAM alone). */
export class RamAttacker {
  private constructor(
    readonly model: KernelModel,
    readonly writer: RamFileWriter,
    private readonly mem: FilePhysicalMemory,
  ) {}

  /**
   * The RAM of the VM whose QEMU has host pid `qemuPid`, with `memoryMiB` of RAM (as its spec says; QEMU under
   * `accel` got `guestRamBytes`) on the `pc` machine (below the
   * 3 GiB PCI hole: one region): QEMU's memfd, opened read-write through `/proc/<pid>/fd/N` (needs root or
   * QEMU's uid, as a host intruder would have).
   */
  static open(qemuPid: number, memoryMiB: number, accel: Accelerator): RamAttacker {
    const bytes = guestRamBytes(memoryMiB, accel);
    const regions = pcRamRegions(BigInt(bytes));
    const mem = FilePhysicalMemory.fromFd(openGuestRam(qemuPid, bytes), regions);
    try {
      const rw = openGuestRam(qemuPid, bytes, "r+");
      let writer: RamFileWriter;
      try {
        writer = RamFileWriter.open(`/proc/self/fd/${rw}`, regions);
      } finally {
        closeSync(rw);
      }
      return new RamAttacker(buildKernelModel(mem), writer, mem);
    } catch (err) {
      mem.close();
      throw err;
    }
  }

  /** A kernel symbol's address (throws if the kernel has none by that name). */
  sym(name: string): bigint {
    const a = this.model.symbols.address(name);
    if (a === undefined) throw new Error(`the guest kernel has no symbol ${name}`);
    return a;
  }

  close(): void {
    this.writer.close();
    this.mem.close();
  }
}

/** The guest's serial console as a shell: runs a command line and returns what it printed. */
export class ConsoleShell {
  private buf = "";
  private n = 0;

  private constructor(private readonly socket: Socket) {
    socket.on("data", (d: Buffer) => {
      this.buf += d.toString("latin1");
      if (this.buf.length > 1_000_000) this.buf = this.buf.slice(-500_000);
    });
  }

  /** Attaches to `vm`'s console through the daemon (`GET /v1/vms/NAME/console`, Upgrade: vigil-console). */
  static async open(vm: string, target: Target): Promise<ConsoleShell> {
    const shell = new ConsoleShell(await upgrade(`/v1/vms/${encodeURIComponent(vm)}/console`, target));
    // The shell may not have printed its prompt yet: ask until it answers.
    const deadline = Date.now() + 30_000;
    for (;;) {
      try {
        await shell.run("true", 2000);
        return shell;
      } catch (err) {
        if (Date.now() > deadline) throw err;
      }
    }
  }

  /** Runs `cmd` (one shell line) and returns its output; the end is found by a marker the echo cannot fake. */
  async run(cmd: string, timeoutMs = 20_000): Promise<string> {
    const tag = `__vigil_console_${++this.n}__`;
    const start = this.buf.length;
    // "a &; b" is a syntax error: a command line ending in & gets a no-op before the marker.
    const line = /&\s*$/.test(cmd) ? `${cmd} true` : cmd;
    this.socket.write(`${line}; echo ${tag.slice(0, 8)}""${tag.slice(8)}\n`);
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      const at = this.buf.indexOf(tag, start);
      if (at >= 0) return this.buf.slice(start, at);
      await new Promise((r) => setTimeout(r, 50));
    }
    throw new Error(`the console did not finish ${JSON.stringify(cmd)} within ${timeoutMs} ms`);
  }

  /** Starts `cmd` in the background and returns its pid. */
  async spawn(cmd: string): Promise<number> {
    const out = await this.run(`${cmd} & echo BGPID=$!`);
    const pid = Number(/BGPID=(\d+)/.exec(out)?.[1]);
    if (!Number.isInteger(pid) || pid <= 1) throw new Error(`cannot start ${JSON.stringify(cmd)}: ${out}`);
    return pid;
  }

  close(): void {
    this.socket.destroy();
  }
}
