/**
 * A stand-in `tiny` image in a test cache: the files and manifest the catalog checks, a real (empty) qcow2 disk, a
 * kernel and initrd that are only bytes. For tests that create and move VMs without booting them.
 */
import { execFileSync } from "node:child_process";
import { mkdirSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";

/** Writes the image under `cache`/images/tiny and returns its directory; `kernel` is the vmlinuz's bytes. */
export function fakeTiny(cache: string, kernel = "kernel-1"): string {
  const dir = join(cache, "images", "tiny", "k1");
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, "vmlinuz"), kernel);
  writeFileSync(join(dir, "initrd.img"), "initrd-1");
  execFileSync("qemu-img", ["create", "-q", "-f", "qcow2", join(dir, "disk.qcow2"), "64M"]);
  const f = { sha256: "0".repeat(64), size: 1 };
  writeFileSync(join(dir, "manifest.json"), JSON.stringify({ format: 1, name: "tiny", key: "k1", builtAt: "2026-01-01T00:00:00Z", kernel: { package: "p", version: "1", release: "r" }, busybox: { package: "b", version: "1" }, files: { vmlinuz: f, "initrd.img": f, "disk.qcow2": f }, cmdline: "console=ttyS0" }));
  symlinkSync("k1", join(cache, "images", "tiny", "current"));
  return dir;
}
