/**
 * The QEMU jail end to end (docs/jail.md), with real QEMU under TCG. Two VMs run; then "VM A's QEMU is
 * compromised": code runs as A's uid inside A's namespaces (nsenter into its mount, pid, ipc and uts namespaces,
 * then setpriv to its uid with no groups and no_new_privs) and tries to reach what a root QEMU could. It cannot:
 * not B's disk or RAM, not the site key, the database, the daemon's socket or /etc/shadow. QEMU's own status
 * shows the drop; its cgroup limits pids; after a daemon restart the VM is reattached; after stop nothing is left.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, readFileSync, readdirSync, readlinkSync, statSync } from "node:fs";
import { join } from "node:path";
import { requireTinyImage, startDaemon, waitFor } from "../harness.ts";

type Vm = { id: string; name: string; state: string; pid: number | null; paths: { dir: string; disks: Record<string, string> } };

/** Guest RAM is QEMU's memfd: its host path is /proc/<qemu pid>/fd/N. */
function ramPathOf(pid: number): string {
  const fd = readdirSync(`/proc/${pid}/fd`).find((n) => readlinkSync(`/proc/${pid}/fd/${n}`).startsWith("/memfd:memory-backend-memfd"));
  assert.ok(fd !== undefined, `QEMU ${pid} holds its RAM memfd`);
  return `/proc/${pid}/fd/${fd}`;
}

/** Runs `script` with sh as VM `pid`'s uid inside its namespaces. */
function asQemu(pid: number, uid: number, script: string) {
  const r = spawnSync("nsenter", ["-t", String(pid), "-m", "-p", "-i", "-u", "setpriv", `--reuid=${uid}`, `--regid=${uid}`, "--clear-groups", "--no-new-privs", "/bin/sh", "-c", script], { encoding: "utf8", timeout: 20_000 });
  return { status: r.status, out: `${r.stdout}${r.stderr}` };
}

function cgroupsOf(pid: number): string[] {
  return readFileSync(`/proc/${pid}/cgroup`, "utf8").trim().split("\n");
}

test("a compromised QEMU is confined to its own VM", { timeout: 400_000 }, async (t) => {
  requireTinyImage();
  const d = await startDaemon(t);
  for (const name of ["ja", "jb"]) assert.equal(d.cli("vm", "create", name, "--memory", "128", "--vcpus", "1").status, 0);
  const [a, b] = await Promise.all(["ja", "jb"].map((n) => d.api<Vm>("POST", `/v1/vms/${n}/start`, { wait: true })));
  assert.ok(a && b && a.pid && b.pid);

  // What QEMU itself is: the VM's uid, no capabilities, no_new_privs, QEMU's seccomp filter.
  const status = readFileSync(`/proc/${a.pid}/status`, "utf8");
  const field = (k: string) => new RegExp(`^${k}:\\s*(.*)$`, "m").exec(status)?.[1]?.trim();
  const uid = Number(field("Uid")!.split(/\s+/)[0]);
  assert.ok(uid >= 1_800_000_000, `QEMU runs as a VM uid, not ${uid}`);
  assert.deepEqual(field("Uid")!.split(/\s+/).map(Number), [uid, uid, uid, uid]);
  assert.equal(field("NoNewPrivs"), "1");
  assert.equal(field("CapEff"), "0000000000000000");
  assert.equal(field("CapBnd"), "0000000000000000");
  assert.equal(field("Seccomp"), "2");
  // No supplementary groups, an empty environment, and its resource limits (soft = hard, so it cannot raise them).
  assert.match(status, /^Groups:[ \t]*$/m);
  assert.equal(readFileSync(`/proc/${a.pid}/environ`, "utf8"), "");
  const limits = readFileSync(`/proc/${a.pid}/limits`, "utf8");
  const limit = (name: string) => new RegExp(`^${name}\\s+(\\S+)\\s+(\\S+)`, "m").exec(limits)?.slice(1, 3);
  assert.deepEqual(limit("Max open files"), ["4096", "4096"]);
  assert.deepEqual(limit("Max core file size"), ["0", "0"]);
  const nproc = limit("Max processes");
  assert.ok(nproc && nproc[0] === nproc[1] && Number(nproc[0]) < 1000, `nproc bounded: ${nproc?.join(" ")}`);
  const fsize = limit("Max file size");
  assert.ok(fsize && fsize[0] === fsize[1] && /^\d+$/.test(fsize[0]!), `fsize bounded: ${fsize?.join(" ")}`);
  const uidB = Number(/^Uid:\s*(\d+)/m.exec(readFileSync(`/proc/${b.pid}/status`, "utf8"))![1]);
  assert.notEqual(uidB, uid, "each VM has its own uid");
  assert.equal(readFileSync(join(a.paths.dir, "jail.pid"), "utf8").trim(), String(a.pid), "the daemon's pid file holds QEMU's host pid");
  assert.equal(statSync(join(a.paths.dir, "jail.pid")).uid, 0);

  // `vm show` reports it from /proc; `vm showcmd` prints the helper's command line, then QEMU's.
  const shown = JSON.parse(d.cli("vm", "show", "ja", "--json").stdout) as { confinement: { mode: string; seccomp: string; process: { uid: number; noNewPrivs: boolean; seccompMode: number; namespaces: string[]; cgroups: string[]; mounts: string[] } } };
  assert.equal(shown.confinement.mode, "jail");
  assert.match(shown.confinement.seccomp, /elevateprivileges=deny/);
  assert.equal(shown.confinement.process.uid, uid);
  assert.equal(shown.confinement.process.noNewPrivs, true);
  assert.equal(shown.confinement.process.seccompMode, 2);
  for (const ns of ["mnt", "pid", "ipc", "uts", "net"]) assert.ok(shown.confinement.process.namespaces.includes(ns), `${ns} namespace (${shown.confinement.process.namespaces.join(",")})`);
  assert.ok(!shown.confinement.process.mounts.includes(d.home), "VIGIL_HOME is not mounted in the jail");
  const cmd = d.cli("vm", "showcmd", "ja");
  assert.match(cmd.stdout, /vigil-jail \\\n {2}--uid \\\n {2}\d+[\s\S]*--netns[\s\S]* -- \\\n {2}\/usr\/bin\/qemu-system-x86_64 \\\n {2}-name/);

  // Its cgroups: pids.max set, devices restricted, in every hierarchy with the VM's own directory.
  const pidsLine = cgroupsOf(a.pid).find((l) => /:pids:/.test(l))!;
  const pidsDir = join("/sys/fs/cgroup/pids", pidsLine.split(":")[2]!);
  assert.match(pidsDir, new RegExp(`vigil-${a.id}$`));
  assert.ok(Number(readFileSync(join(pidsDir, "pids.max"), "utf8")) > 0);
  const devLine = cgroupsOf(a.pid).find((l) => /:devices:/.test(l))!;
  const devList = readFileSync(join("/sys/fs/cgroup/devices", devLine.split(":")[2]!, "devices.list"), "utf8");
  assert.doesNotMatch(devList, /^a /m, "not every device is allowed");
  assert.match(devList, /^c 1:3 rwm$/m);

  // The attacker: A's uid in A's namespaces.
  const targets = {
    "B's disk": b.paths.disks.root!,
    "B's RAM": ramPathOf(b.pid!),
    "the site key dir": join(d.home, "keys"),
    "the database": join(d.home, "vigil.db"),
    "the daemon socket": join(d.home, "run", "vigil.sock"),
    "/etc/shadow": "/etc/shadow",
  };
  for (const [what, path] of Object.entries(targets)) {
    assert.ok(existsSync(path), `${what} exists on the host (${path})`);
    const r = asQemu(a.pid, uid, `cat ${JSON.stringify(path)} >/dev/null 2>&1 || ls ${JSON.stringify(path)} >/dev/null 2>&1 && echo REACHED`);
    assert.doesNotMatch(r.out, /REACHED/, `${what} is reachable from the jail: ${r.out}`);
  }
  // Not even B's QEMU process: the pid namespace shows only A's own.
  const ps = asQemu(a.pid, uid, "ls /proc | grep -E '^[0-9]+$' | tr '\\n' ' '");
  assert.match(ps.out, /^1 /, ps.out);
  assert.doesNotMatch(ps.out, new RegExp(`\\b${b.pid}\\b`));
  // The sanity check of the attacker itself: it does run, as A's uid, and reaches A's own run directory.
  const self = asQemu(a.pid, uid, `id -u; ls ${JSON.stringify(join(a.paths.dir, "run"))}`);
  assert.equal(self.status, 0, self.out);
  assert.match(self.out, new RegExp(`^${uid}\\n[\\s\\S]*qmp\\.sock`));
  // A write outside its own files fails (read-only root).
  assert.notEqual(asQemu(a.pid, uid, "echo x > /usr/x || echo x > /x").status, 0);

  // A daemon restart reattaches the jailed QEMUs (exe by inode, pid from the helper's file, -uuid).
  await d.kill9();
  await d.restart();
  await waitFor(() => /"reattached":\[/.test(d.log()), 30_000, "recover");
  const again = await d.api<Vm>("GET", "/v1/vms/ja");
  assert.equal(again.state, "running");
  assert.equal(again.pid, a.pid, "the same QEMU");
  assert.ok((await d.api<{ processes: unknown[] }>("GET", "/v1/vms/ja/guest/ps")).processes.length > 0);

  // Stop and kill leave no process and no cgroup directory behind: kill even when B's helper was SIGKILLed first
  // (then it never removes B's directories; the daemon's removeCgroups does).
  const dirs = cgroupsOf(a.pid).filter((l) => l.includes(`vigil-${a.id}`));
  assert.ok(dirs.length >= 3, dirs.join(" "));
  const dirsB = cgroupsOf(b.pid).filter((l) => l.includes(`vigil-${b.id}`));
  assert.ok(dirsB.length >= 3, dirsB.join(" "));
  const ppidOf = (pid: number) => Number(readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]!.split(" ")[1]);
  const qemuB = b.pid;
  const helperB = ppidOf(qemuB);
  assert.equal(readFileSync(`/proc/${helperB}/comm`, "utf8").trim(), "vigil-jail");
  process.kill(helperB, "SIGKILL");
  await waitFor(() => ppidOf(qemuB) !== helperB, 10_000, "B's helper gone");
  assert.equal(d.cli("vm", "stop", "ja").status, 0);
  assert.equal(d.cli("vm", "kill", "jb").status, 0);
  await waitFor(() => !existsSync(`/proc/${a.pid}`) && !existsSync(`/proc/${b.pid}`), 15_000, "QEMUs gone");
  await waitFor(() => !existsSync(pidsDir), 10_000, "the pids cgroup removed");
  // Removal follows the last task's exit (retried while the kernel still counts it): wait for it, then none is left.
  const leftover = () =>
    [...dirs, ...dirsB]
      .map((line) => {
        const [, ctrls, path] = line.split(":");
        const mount = ctrls === "" ? "/sys/fs/cgroup/unified" : join("/sys/fs/cgroup", ctrls!.split(",")[0]!.replace(/^name=/, ""));
        return join(mount, path!);
      })
      .filter((dir) => existsSync(dir));
  await waitFor(() => leftover().length === 0, 10_000, "every cgroup of both VMs removed").catch(() => undefined);
  assert.deepEqual(leftover(), [], "no cgroup is left");
});

test("without its helper a VM does not start unjailed", { timeout: 120_000 }, async (t) => {
  requireTinyImage();
  process.env.VIGIL_JAIL_HELPER = "/nonexistent/vigil-jail";
  let d;
  try {
    d = await startDaemon(t);
  } finally {
    delete process.env.VIGIL_JAIL_HELPER;
  }
  assert.equal(d.cli("vm", "create", "nojail", "--memory", "128").status, 0);
  const r = d.cli("vm", "start", "nojail");
  assert.notEqual(r.status, 0);
  assert.match(r.stderr, /Cannot jail QEMU: the helper "\/nonexistent\/vigil-jail" is missing/);
  assert.equal(d.cli("vm", "status", "nojail").stdout.trim(), "stopped");
});
