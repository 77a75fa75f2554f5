/**
 * Named pipes between the daemon and QEMU. A recording's serial ports are QEMU `pipe` chardevs (docs/recording.md,
 * "Serial ports of a recording"): a FIFO holds 64 KiB of one-byte UART writes where a unix socket's send buffer
 * holds a few hundred, so a daemon that is slow to read for a moment never makes QEMU's write fail with EAGAIN — the
 * retry QEMU then schedules on the host's event loop is not recorded, and the replay diverges.
 */
import { constants, lstatSync, openSync, rmSync } from "node:fs";
import { Socket } from "node:net";
import { VigilError, messageOf, q } from "../errors.ts";
import { runCommand } from "../util/run-command.ts";

/** Makes a FIFO (0600) at `path`, replacing whatever was left there. */
export async function makeFifo(path: string): Promise<void> {
  const st = lstatSync(path, { throwIfNoEntry: false });
  if (st) rmSync(path, { force: true });
  await runCommand("mkfifo", ["-m", "0600", path], { what: "mkfifo" });
}

/** The read end of the FIFO at `path`, as a stream (non-blocking: opening it never waits for a writer). */
function openFifoReader(path: string): Socket {
  return new Socket({ fd: openFifo(path, constants.O_RDONLY), readable: true, writable: false });
}

/** The write end of the FIFO at `path`; it fails unless a reader (QEMU) has it open already. */
function openFifoWriter(path: string): Socket {
  return new Socket({ fd: openFifo(path, constants.O_WRONLY), readable: false, writable: true });
}

function openFifo(path: string, mode: number): number {
  const st = lstatSync(path, { throwIfNoEntry: false });
  if (!st?.isFIFO()) throw new VigilError("VIGIL_HOST", `Cannot open ${q(path)}: it is not a FIFO`);
  try {
    return openSync(path, mode | constants.O_NONBLOCK | constants.O_NOFOLLOW);
  } catch (err) {
    throw new VigilError("VIGIL_HOST", `Cannot open the FIFO ${q(path)}: ${messageOf(err)}`);
  }
}

/** The two FIFOs of a QEMU `pipe` chardev at `base`: QEMU reads `<base>.in` and writes `<base>.out`. */
export function pipeEnds(base: string): { toGuest: string; fromGuest: string } {
  return { toGuest: `${base}.in`, fromGuest: `${base}.out` };
}

/** The daemon's ends of QEMU's `pipe` chardev at `base` (QEMU must have opened it): both, or neither on failure. */
export function openChardevPipe(base: string): { fromGuest: Socket; toGuest: Socket; destroy(): void } {
  const ends = pipeEnds(base);
  const fromGuest = openFifoReader(ends.fromGuest);
  try {
    const toGuest = openFifoWriter(ends.toGuest);
    return {
      fromGuest,
      toGuest,
      destroy: () => {
        fromGuest.destroy();
        toGuest.destroy();
      },
    };
  } catch (err) {
    fromGuest.destroy();
    throw err;
  }
}
