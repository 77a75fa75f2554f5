import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ImageCatalog } from "./catalog.ts";
import { VigilError } from "../errors.ts";

const entry = (size: number) => ({ sha256: "0".repeat(64), size });
const manifest = {
  format: 1,
  name: "debian-12",
  key: "0123456789abcdef",
  builtAt: "2026-12-07T08:00:00Z",
  suite: "bookworm",
  packages: 94,
  kernel: { package: "linux-image-6.12.118+deb12-cloud-amd64", version: "6.12.118-1~deb12u1", release: "6.12.118+deb12-cloud-amd64" },
  files: { vmlinuz: entry(10), "initrd.img": entry(20), "disk.qcow2": entry(30) },
  cmdline: "console=ttyS0 quiet panic=-1",
};

function cacheWith(m: unknown): { cache: string; dir: string } {
  const cache = mkdtempSync(join(tmpdir(), "vigil-catalog-"));
  const dir = join(cache, "images", "debian-12", "0123456789abcdef");
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, "manifest.json"), JSON.stringify(m));
  symlinkSync("0123456789abcdef", join(cache, "images", "debian-12", "current"));
  return { cache, dir };
}

test("debian-12 is a built-in, kernel-booted image whose disk backs the VM's root disk", (t) => {
  const { cache, dir } = cacheWith(manifest);
  t.after(() => rmSync(cache, { recursive: true, force: true }));
  const catalog = new ImageCatalog(cache);
  const img = catalog.get("debian-12");
  assert.deepEqual(img.boot, { kind: "kernel", kernel: join(dir, "vmlinuz"), initrd: join(dir, "initrd.img"), cmdline: manifest.cmdline });
  assert.equal(img.disk, join(dir, "disk.qcow2"));
  assert.equal(img.view.kind, "builtin");
  assert.equal(img.view.sizeBytes, 60);
  assert.deepEqual(catalog.list().map((v) => v.name), ["debian-12"], "listed (tiny is not built in this cache)");
});

test("a debian-12 manifest that fails validation is a host error, not a bootable image", (t) => {
  const { cache } = cacheWith({ ...manifest, suite: "trixie" });
  t.after(() => rmSync(cache, { recursive: true, force: true }));
  assert.throws(() => new ImageCatalog(cache).get("debian-12"), (e: unknown) => e instanceof VigilError && e.code === "VIGIL_HOST" && /debian-12 image .* bad manifest/.test(e.message));
});

test("an unbuilt debian-12 is 'not found' with the command that builds it", (t) => {
  const cache = mkdtempSync(join(tmpdir(), "vigil-catalog-"));
  t.after(() => rmSync(cache, { recursive: true, force: true }));
  assert.throws(() => new ImageCatalog(cache).get("debian-12"), (e: unknown) => e instanceof VigilError && e.code === "VIGIL_IMAGE_NOT_FOUND" && /build-debian12\.sh/.test(e.message));
  assert.deepEqual(new ImageCatalog(cache).list(), []);
});
