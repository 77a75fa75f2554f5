/**
 * The built-in `debian-12` image (guest/build-debian12.sh) with real QEMU: listed, created as a linked overlay of
 * the image's qcow2, booted to its agent, a real Debian userland and dpkg database inside, the serial console a
 * shell, an ACPI stop. Boot-to-agent is timed over three boots (median in the diagnostics).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { join } from "node:path";
import { upgrade } from "../../src/cli/client.ts";
import { guestExec, startDaemon, waitFor } from "../harness.ts";

const ROOT = join(import.meta.dirname, "..", "..");

function requireDebian12Image(): string {
  const r = spawnSync("bash", [join(ROOT, "guest", "build-debian12.sh"), "--print-dir"], { encoding: "utf8" });
  if (r.status !== 0) throw new Error("The debian-12 guest image is not built: set-up must build it with guest/build-debian12.sh");
  return r.stdout.trim();
}

test("debian-12 boots to its agent with a real Debian userland and dpkg database; console and stop work", { timeout: 420_000 }, async (t) => {
  const imageDir = requireDebian12Image();
  const d = await startDaemon(t);
  const list = d.cli("image", "list", "--json");
  assert.equal(list.status, 0, list.stderr);
  const images = JSON.parse(list.stdout) as Array<{ name: string; kind: string; dir: string }>;
  const deb = images.find((i) => i.name === "debian-12");
  assert.ok(deb, `image list shows debian-12: ${list.stdout}`);
  assert.equal(deb.kind, "builtin");
  assert.equal(deb.dir, imageDir);

  const created = d.cli("vm", "create", "deb", "--image", "debian-12", "--memory", "256", "--vcpus", "1", "--json");
  assert.equal(created.status, 0, created.stderr);
  const vm = JSON.parse(created.stdout) as { image: string; spec: { boot: { kind: string; kernel: string }; disks: Array<{ name: string; backing?: string }> }; paths: { dir: string; disks: Record<string, string> } };
  assert.equal(vm.spec.boot.kind, "kernel");
  assert.equal(vm.spec.boot.kernel, join(imageDir, "vmlinuz"));
  assert.deepEqual(vm.spec.disks.map((x) => [x.name, x.backing]), [["root", join(imageDir, "disk.qcow2")]]);

  const boots: number[] = [];
  for (let i = 0; i < 3; i++) {
    const t0 = Date.now();
    const started = d.cli("vm", "start", "deb", "--wait", "--json");
    assert.equal(started.status, 0, started.stderr + d.log());
    boots.push((Date.now() - t0) / 1000);
    if (i === 0) {
      // The root disk is a linked overlay of the image's qcow2, never a copy.
      const info = spawnSync("qemu-img", ["info", "-U", "--output=json", vm.paths.disks.root!], { encoding: "utf8" });
      assert.equal(info.status, 0, info.stderr);
      const top = JSON.parse(info.stdout) as { "full-backing-filename"?: string; "actual-size": number };
      assert.equal(top["full-backing-filename"], join(imageDir, "disk.qcow2"));
      assert.ok(top["actual-size"] < 32 * 1024 * 1024, `the overlay holds only the guest's writes (${top["actual-size"]} bytes)`);
      const ver = await guestExec(d, "deb", ["cat", "/etc/debian_version"]);
      assert.equal(ver.exitCode, 0, ver.err);
      assert.match(ver.out, /^12\.\d+$/, "a Debian 12 userland");
      const rel = await guestExec(d, "deb", ["uname", "-r"]);
      const manifest = JSON.parse(spawnSync("cat", [join(imageDir, "manifest.json")], { encoding: "utf8" }).stdout) as { packages: number; kernel: { package: string; release: string } };
      assert.equal(rel.out, manifest.kernel.release, "the kernel booted is the one in the image's manifest");
      const pk = await guestExec(d, "deb", ["dpkg-packages"]);
      assert.equal(pk.exitCode, 0, pk.err);
      const names = pk.out.split("\n");
      assert.equal(names.length, manifest.packages, "dpkg-query in the guest sees the packages the build installed");
      for (const p of ["dpkg", "apt", "base-files", "busybox-static", "kmod", manifest.kernel.package]) assert.ok(names.includes(p), `${p} is in the guest's dpkg database`);
      const mods = await guestExec(d, "deb", ["ls", `/lib/modules/${manifest.kernel.release}/kernel/drivers/block`]);
      assert.match(mods.out, /virtio_blk\.ko/, "the root holds the same kernel's modules");

      const socket = await upgrade("/v1/vms/deb/console", d.target);
      let seen = "";
      socket.on("data", (b: Buffer) => (seen += b.toString()));
      try {
        const marker = `deb-${process.pid}`;
        await waitFor(() => {
          socket.write(`echo ${marker}-$((6*7)) $(cat /etc/debian_version)\n`);
          return /deb-\d+-42 12\.\d+/.test(seen);
        }, 30_000, "the console shell to answer");
      } finally {
        socket.destroy();
      }
    }
    const stopped = d.cli("vm", "stop", "deb", "--json");
    assert.equal(stopped.status, 0, stopped.stderr);
    assert.equal((JSON.parse(stopped.stdout) as { how: string }).how, "acpi", "the guest powers off on the ACPI button");
  }
  const sorted = [...boots].sort((a, b) => a - b);
  t.diagnostic(`debian-12 start --wait (boot to agent), TCG, 256 MiB, 1 vCPU: ${boots.map((b) => b.toFixed(1)).join(", ")} s; median ${sorted[1]!.toFixed(1)} s`);

  // Dormant again: the offline scan reads the same VM's disk (vigil's overlay over the image) without booting it,
  // and finds the dpkg database the guest itself reported.
  const built = JSON.parse(spawnSync("cat", [join(imageDir, "manifest.json")], { encoding: "utf8" }).stdout) as { packages: number };
  const scanned = d.cli("scan", "deb", "--json");
  assert.equal(scanned.status, 0, scanned.stderr);
  const scan = JSON.parse(scanned.stdout) as { scan: { os: { id: string; versionId: string }; packages: { name: string }[]; pending: unknown[] }; posture: { state: string } };
  assert.equal(scan.scan.os.id, "debian");
  assert.equal(scan.scan.os.versionId, "12");
  assert.equal(scan.scan.packages.length, built.packages, "the offline scan sees the packages dpkg-query saw in the running guest");
  assert.match(d.cli("posture", "deb").stdout, /^last scanned +\S+ \(offline\)$/m);
  t.diagnostic(`debian-12 scanned dormant: ${scan.scan.packages.length} packages, ${scan.scan.pending.length} pending security updates, posture ${scan.posture.state}`);
});
