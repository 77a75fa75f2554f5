/** Guest RAM from the host: QEMU's memfd found by its link name, opened read-only, its size checked. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { closeSync, fstatSync, readFileSync, readSync, writeSync } from "node:fs";
import { openGuestRam } from "./guest-ram.ts";
import { memfdQemu } from "./testing/memfd-qemu.ts";

const MiB = 1024 * 1024;
const flagsOf = (fd: number): number => Number.parseInt(/^flags:\s*([0-7]+)/m.exec(readFileSync(`/proc/self/fdinfo/${fd}`, "utf8"))![1]!, 8);

test("openGuestRam opens QEMU's RAM memfd read-only and sees what is written through QEMU's mapping", async (t) => {
  const pid = await memfdQemu(t, 16);
  const fd = openGuestRam(pid, 16 * MiB);
  t.after(() => closeSync(fd));
  assert.equal(fstatSync(fd).size, 16 * MiB);
  assert.equal(flagsOf(fd) & 3, 0, "O_RDONLY");
  assert.throws(() => writeSync(fd, Buffer.from("x"), 0, 1, 0), /EBADF/, "vigil's descriptor cannot write guest RAM");
  // A second, writable opener (the test attacker) changes the same memory: this is QEMU's RAM, not a copy.
  const rw = openGuestRam(pid, 16 * MiB, "r+");
  t.after(() => closeSync(rw));
  writeSync(rw, Buffer.from("vigil-marker"), 0, 12, 4096);
  const got = Buffer.alloc(12);
  readSync(fd, got, 0, 12, 4096);
  assert.equal(got.toString(), "vigil-marker");
});

test("openGuestRam refuses a memfd of another size than the spec's memory, and a process without one", async (t) => {
  const pid = await memfdQemu(t, 16);
  assert.throws(() => openGuestRam(pid, 32 * MiB), (e: Error & { code?: string }) => e.code === "VIGIL_HOST" && /no \/memfd:memory-backend-memfd \(deleted\) of 33554432 bytes \(1 memfd/.test(e.message));
  assert.throws(() => openGuestRam(process.pid, 16 * MiB), /has no \/memfd:memory-backend-memfd \(deleted\) of 16777216 bytes \(0 memfd/);
  assert.throws(() => openGuestRam(0, 16 * MiB), /bad QEMU pid 0/);
  assert.throws(() => openGuestRam(2 ** 22 + 1, 16 * MiB), /cannot list \/proc\/4194305\/fd/);
});
