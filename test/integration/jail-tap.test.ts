/**
 * The jail helper's `--tap N:/run/netns/NAME:IFNAME` (docs/jail.md, docs/network.md), run directly as root: it
 * attaches to a tap that exists in a network namespace this test creates, and hands the process exactly that
 * descriptor at N while the process itself sits in its own empty network namespace. Bad arguments and missing or
 * wrong devices are refused before anything runs, and nothing is ever created in the namespace.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { randomBytes } from "node:crypto";
import { JAIL_HELPER, hostCgroupSpecs, removeCgroups } from "../../src/host/jail.ts";

const ip = (...args: string[]) => spawnSync("ip", args, { encoding: "utf8" });

function setup(t: { after: (fn: () => void) => void }) {
  const ns = `vt-jt-${randomBytes(4).toString("hex")}`;
  const uid = 1_899_000_000 + randomBytes(2).readUInt16BE();
  const tap = `vt-${randomBytes(5).toString("hex")}`;
  const dir = mkdtempSync(join(tmpdir(), "vigil-jail-tap-"));
  t.after(() => {
    ip("netns", "del", ns);
    rmSync(dir, { recursive: true, force: true });
  });
  assert.equal(ip("netns", "add", ns).status, 0);
  assert.equal(ip("-n", ns, "tuntap", "add", "dev", tap, "mode", "tap", "user", String(uid), "group", String(uid)).status, 0);
  assert.equal(ip("-n", ns, "link", "add", "vb-jt", "type", "bridge").status, 0);
  // The jail's own cgroups, as for a VM (v1 devices: only the --dev nodes): the taps must be open before them.
  const cgroups = hostCgroupSpecs(randomBytes(8).toString("hex"));
  t.after(() => removeCgroups(cgroups));
  const run = (taps: string[], script: string, extra: string[] = []) => {
    const root = join(dir, `root-${randomBytes(3).toString("hex")}`);
    mkdirSync(root, { mode: 0o700 });
    const argv = ["--uid", String(uid), "--gid", String(uid), "--pid-file", join(dir, "jail.pid"), "--root", root, ...cgroups.flatMap((c) => ["--cgroup", c]), "--dev", "/dev/null", "--netns", ...extra, ...taps.flatMap((a) => ["--tap", a]), "--chdir", "/", "--", "/bin/sh", "-c", script];
    const r = spawnSync(JAIL_HELPER, argv, { encoding: "utf8", timeout: 20_000, env: {} });
    return { status: r.status, out: `${r.stdout}${r.stderr}` };
  };
  return { ns, tap, uid, run, path: `/run/netns/${ns}` };
}

test("--tap hands the jailed process the named tap at N, from its own empty network namespace", { timeout: 60_000 }, (t) => {
  const { ns, tap, path, run } = setup(t);
  const r = run([`7:${path}:${tap}`], "cat /proc/self/fdinfo/7; echo fds: $(ls /proc/self/fd); echo links: $(tail -n +3 /proc/net/dev | cut -d: -f1); echo uid: $(id -u)");
  assert.equal(r.status, 0, r.out);
  assert.match(r.out, new RegExp(`^iff:\\s+${tap}$`, "m"), "fd 7 is attached to the tap");
  assert.match(r.out, /^fds: 0 1 2 3 7$/m, "only 0-2 and the tap survive (3 is ls's own directory)");
  assert.match(r.out, /^links: lo$/m, "the process is in its own network namespace: the tap is not there");
  assert.doesNotMatch(r.out, /^uid: 0$/m);
  // The tap stays (persistent, the daemon removes it) and the helper came back: nothing new in the namespace.
  const links = ip("-n", ns, "-o", "link", "show").stdout;
  assert.match(links, new RegExp(`: ${tap}:`));
  assert.equal(links.trim().split("\n").length, 3, links);
});

test("--tap refuses bad arguments and missing or wrong devices, and never creates one", { timeout: 60_000 }, (t) => {
  const { ns, tap, path, run } = setup(t);
  const cases: Array<[string[], RegExp, string[]?]> = [
    [[`2:${path}:${tap}`], /bad arguments: --tap descriptor 3..1000/],
    [[`1001:${path}:${tap}`], /bad arguments: --tap descriptor 3..1000/],
    [[`x7:${path}:${tap}`], /bad arguments: --tap descriptor/],
    [[`7:/var/run/netns/${ns}:${tap}`], /bad arguments: --tap namespace path must be \/run\/netns\/NAME/],
    [[`7:/run/netns/../../proc/1/ns/net:${tap}`], /bad arguments: --tap namespace NAME/],
    [[`7:/run/netns/:${tap}`], /bad arguments: --tap namespace path/],
    [[`7:${path}:a-name-of-16-chr`], /bad arguments: --tap IFNAME/],
    [[`7:${path}:bad/name`], /bad arguments: --tap IFNAME/],
    [[`7:${path}`], /bad arguments: --tap N:\/run\/netns\/NAME:IFNAME/],
    [[`7:${path}:${tap}:x`], /bad arguments: --tap N:/],
    [[`7:${path}:${tap}`, `7:${path}:${tap}`], /bad arguments: --tap descriptors must differ/],
    [[`3:${path}:${tap}`], /bad arguments: --tap descriptor already used by --open-ro/, ["--open-ro", "3:/etc/hostname"]],
    [[`7:/run/netns/vt-none-${randomBytes(3).toString("hex")}:${tap}`], /vigil-jail: open network namespace \/run\/netns\/vt-none-\w+: No such file/],
    [[`7:${path}:vt-missing`], /vigil-jail: find tap vt-missing in \/run\/netns\/vt-jt-\w+: No such device/],
    [[`7:${path}:vb-jt`], /vigil-jail: attach to tap \(TUNSETIFF\) vb-jt in \/run\/netns\/vt-jt-\w+: Invalid argument/],
  ];
  for (const [taps, message, extra] of cases) {
    const r = run(taps, "echo ran", extra);
    assert.equal(r.status, 125, `${taps.join(" ")}: ${r.out}`);
    assert.match(r.out, message, taps.join(" "));
    assert.doesNotMatch(r.out, /^ran$/m);
  }
  assert.notEqual(ip("-n", ns, "link", "show", "vt-missing").status, 0, "a missing tap is never created");
});
