/** Test helper: QEMU's end of a `pipe` chardev (src/host/fifo.ts), for the recorder's relays without a QEMU. */
import type { TestContext } from "node:test";
import { constants, openSync } from "node:fs";
import { Socket } from "node:net";
import { makeFifo, pipeEnds } from "../fifo.ts";

/** QEMU's side of a `pipe` chardev: both FIFOs opened read-write, as QEMU opens them (no EOF, no blocking open). */
export async function fakeQemuPipe(t: TestContext, base: string): Promise<{ input: Socket; output: Socket; outputFd: number }> {
  const ends = pipeEnds(base);
  await makeFifo(ends.toGuest);
  await makeFifo(ends.fromGuest);
  const input = new Socket({ fd: openSync(ends.toGuest, constants.O_RDWR | constants.O_NONBLOCK), readable: true, writable: false });
  const outputFd = openSync(ends.fromGuest, constants.O_RDWR | constants.O_NONBLOCK);
  const output = new Socket({ fd: outputFd, readable: false, writable: true });
  t.after(() => {
    input.destroy();
    output.destroy();
  });
  return { input, output, outputFd };
}

