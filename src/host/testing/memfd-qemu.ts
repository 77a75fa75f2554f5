/**
 * Test support: a real QEMU holding guest RAM in a memfd exactly as vigil starts it (memory-backend-memfd,
 * share=on, seal=on), paused before the first instruction (-S), so tests can find and read that RAM through
 * /proc/<pid>/fd without booting anything. Killed by the test's `after`.
 */
import { spawn } from "node:child_process";
import { existsSync, readdirSync, readlinkSync } from "node:fs";
import type { TestContext } from "node:test";
import { QEMU_BINARY } from "../qemu-process.ts";
import { RAM_MEMFD_LINK } from "../guest-ram.ts";

export async function memfdQemu(t: TestContext, memoryMiB: number): Promise<number> {
  const child = spawn(
    QEMU_BINARY,
    ["-S", "-nodefaults", "-no-user-config", "-display", "none", "-machine", "pc,accel=tcg,memory-backend=ram0", "-m", `${memoryMiB}M`, "-object", `memory-backend-memfd,id=ram0,size=${memoryMiB}M,share=on,seal=on`],
    { stdio: "ignore" },
  );
  t.after(() => {
    child.kill("SIGKILL");
  });
  const pid = child.pid;
  if (pid === undefined) throw new Error(`cannot start ${QEMU_BINARY}`);
  const deadline = Date.now() + 20_000;
  for (;;) {
    const fds = existsSync(`/proc/${pid}/fd`) ? readdirSync(`/proc/${pid}/fd`) : [];
    if (fds.some((n) => {
      try {
        return readlinkSync(`/proc/${pid}/fd/${n}`) === RAM_MEMFD_LINK;
      } catch {
        return false;
      }
    })) return pid;
    if (child.exitCode !== null || Date.now() > deadline) throw new Error(`QEMU (pid ${pid}) did not create its RAM memfd`);
    await new Promise((r) => setTimeout(r, 20));
  }
}
