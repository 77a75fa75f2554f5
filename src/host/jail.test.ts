import { test } from "node:test";
import assert from "node:assert/strict";
import { buildJailArgv, cgroupDir, cgroupSpecs, jailDevices, type JailPlan } from "./jail.ts";

const plan: JailPlan = {
  uid: 1_800_000_007,
  gid: 1_800_000_007,
  pidFile: "/v/vms/u1/jail.pid",
  rootDir: "/v/vms/u1/jail-root",
  cgroups: ["/sys/fs/cgroup/pids:vigil-u1", "/sys/fs/cgroup/unified:a/b/vigil-u1"],
  pidsMax: 98,
  devices: jailDevices("tcg"),
  readWrite: ["/v/vms/u1/run"],
  readOnly: ["/cache/tiny/vmlinuz"],
  fds: [{ fd: 3, path: "/cache/tiny/disk.qcow2" }],
  taps: [{ fd: 4, netnsPath: "/run/netns/vigil-3fa2c1d0", ifname: "vt-0123456789" }],
  netns: true,
  nofile: 4096,
  nproc: 98,
  fsizeBytes: 1 << 30,
  chdir: "/v/vms/u1/run",
  qemuBinary: "/usr/bin/qemu-system-x86_64",
  qemuArgv: ["-uuid", "u1", "-S"],
};

test("the helper's argv: every option, then -- and QEMU's argv untouched", () => {
  assert.deepEqual(buildJailArgv(plan), [
    "--uid", "1800000007", "--gid", "1800000007", "--pid-file", "/v/vms/u1/jail.pid", "--root", "/v/vms/u1/jail-root",
    "--cgroup", "/sys/fs/cgroup/pids:vigil-u1", "--cgroup", "/sys/fs/cgroup/unified:a/b/vigil-u1",
    "--pids-max", "98",
    "--dev", "/dev/null", "--dev", "/dev/zero", "--dev", "/dev/random", "--dev", "/dev/urandom",
    "--bind-ro", "/cache/tiny/vmlinuz", "--bind-rw", "/v/vms/u1/run", "--open-ro", "3:/cache/tiny/disk.qcow2",
    "--tap", "4:/run/netns/vigil-3fa2c1d0:vt-0123456789",
    "--netns", "--nofile", "4096", "--nproc", "98", "--fsize", "1073741824", "--chdir", "/v/vms/u1/run",
    "--", "/usr/bin/qemu-system-x86_64", "-uuid", "u1", "-S",
  ]);
  assert.ok(!buildJailArgv({ ...plan, netns: false }).includes("--netns"));
});

test("/dev/kvm only with KVM", () => {
  assert.ok(!jailDevices("tcg").includes("/dev/kvm"));
  assert.ok(jailDevices("kvm").includes("/dev/kvm"));
});

test("cgroups: one per jailed controller's hierarchy and the v2 tree, nested under the daemon's own", () => {
  const mountinfo = [
    "30 25 0:26 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755",
    "31 30 0:27 / /sys/fs/cgroup/cpu rw,nosuid - cgroup cgroup rw,cpu",
    "32 30 0:28 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory",
    "33 30 0:29 / /sys/fs/cgroup/devices rw,nosuid - cgroup cgroup rw,devices",
    "34 30 0:30 / /sys/fs/cgroup/blkio rw,nosuid - cgroup cgroup rw,blkio",
    "35 30 0:31 / /sys/fs/cgroup/pids rw,nosuid - cgroup cgroup rw,pids",
    "36 30 0:32 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw",
  ].join("\n");
  const self = ["8:pids:/", "7:blkio:/", "5:devices:/", "4:memory:/process_api/x", "1:cpu:/", "0::/"].join("\n");
  assert.deepEqual(cgroupSpecs("u1", mountinfo, self), [
    "/sys/fs/cgroup/cpu:vigil-u1",
    "/sys/fs/cgroup/memory:process_api/x/vigil-u1",
    "/sys/fs/cgroup/devices:vigil-u1",
    "/sys/fs/cgroup/pids:vigil-u1",
    "/sys/fs/cgroup/unified:vigil-u1",
  ]);
  assert.equal(cgroupDir("/sys/fs/cgroup/memory:process_api/x/vigil-u1"), "/sys/fs/cgroup/memory/process_api/x/vigil-u1");
  // cgroup v2 only
  assert.deepEqual(cgroupSpecs("u1", "40 1 0:40 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw", "0::/daemon.scope"), ["/sys/fs/cgroup:daemon.scope/vigil-u1"]);
});
