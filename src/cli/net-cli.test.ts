/**
 * `vigil net` as a user meets it, against an in-process daemon whose netns is the test's own ("vt-swcli-…",
 * deleted in `after`): create, list and show (with a NIC the test plugs in) in text and --json, the errors that
 * name the field, delete, and the netns gone with the last network.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { randomBytes, randomUUID } from "node:crypto";
import { EXIT } from "./exit-codes.ts";
import { createVmRequestSchema, resolveSpec } from "../vm/spec.ts";
import { cli, daemon } from "./testing/cli-run.ts";

const netnsList = () => execFileSync("ip", ["netns", "list"], { encoding: "utf8" });

test("net create, list, show (with a plugged NIC), delete; bad input names the field", async (t) => {
  const ns = `vt-swcli-${randomBytes(4).toString("hex")}`;
  process.env.VIGIL_NETNS = ns;
  t.after(() => {
    delete process.env.VIGIL_NETNS;
    // A failed assertion skips the test's own `net delete`: end what still runs inside (dnsmasq outlives a daemon).
    try {
      for (const pid of execFileSync("ip", ["netns", "pids", ns], { encoding: "utf8" }).split("\n").filter((p) => /^\d+$/.test(p))) process.kill(Number(pid), "SIGKILL");
      execFileSync("ip", ["netns", "delete", ns], { stdio: "ignore" });
    } catch {
      // already gone
    }
  });
  const { d, env } = await daemon(t);
  assert.equal(d.deps.network.netns().name, ns);

  const created = await cli(env, ["net", "create", "lab", "--cidr", "10.204.0.0/24"]);
  assert.equal(created.status, 0, created.stderr);
  assert.equal(created.stdout, "Network lab created: 10.204.0.0/24, gateway 10.204.0.1, bridge vb-lab, DHCP on\n");
  const quiet = await cli(env, ["net", "create", "iso", "--cidr", "10.205.0.0/29", "--no-dhcp", "--json"]);
  assert.equal(quiet.status, 0, quiet.stderr);
  assert.equal((JSON.parse(quiet.stdout) as { dhcp: boolean }).dhcp, false);

  const overlap = await cli(env, ["net", "create", "lab2", "--cidr", "10.204.0.128/25"]);
  assert.equal(overlap.status, EXIT.conflict);
  assert.match(overlap.stderr, /cidr 10\.204\.0\.128\/25 overlaps network "lab" \(10\.204\.0\.0\/24\)/);
  const small = await cli(env, ["net", "create", "tiny", "--cidr", "10.206.0.0/30"]);
  assert.equal(small.status, EXIT.badInput);
  assert.match(small.stderr, /\/16 to \/29/);

  const list = await cli(env, ["net", "list", "--json"]);
  assert.deepEqual((JSON.parse(list.stdout) as Array<{ name: string }>).map((n) => n.name), ["iso", "lab"]);
  const table = await cli(env, ["net", "list"]);
  assert.match(table.stdout, /^NAME\s+CIDR\s+GATEWAY\s+BRIDGE\s+DHCP\s+NAT\n/);
  assert.match(table.stdout, /\nlab\s+10\.204\.0\.0\/24\s+10\.204\.0\.1\s+vb-lab\s+yes\s+no\n/);

  const spec = resolveSpec(createVmRequestSchema.parse({ name: "web1", memoryMiB: 128 }), { name: "tiny", boot: { kind: "kernel", kernel: "/k", initrd: "/i", cmdline: "" }, disk: "/d" }, { cpu: "max" });
  const vm = await d.repo.insert({ id: randomUUID(), name: "web1", spec, state: "running", host: "h", vmgenid: randomUUID(), generation: 1, owner: "user:root", approver: null, purpose: null, expiresAt: null, labels: {}, lineage: { kind: "image", image: "tiny" }, isTemplate: false, createdBy: "root", createdAt: new Date().toISOString() });
  const nic = await d.deps.network.attach({ id: vm.id, name: "web1", labels: {}, uid: 64300, gid: 64300 }, { name: "net0", network: "lab", mac: "52:54:00:cc:00:01" });
  const show = await cli(env, ["net", "show", "lab"]);
  assert.equal(show.status, 0, show.stderr);
  assert.match(show.stdout, /^Network lab: 10\.204\.0\.0\/24, gateway 10\.204\.0\.1, bridge vb-lab, DHCP running, NAT off\n/);
  assert.match(show.stdout, new RegExp(`\\nweb1\\s+net0\\s+10\\.204\\.0\\.2\\s+52:54:00:cc:00:01\\s+${nic.tap}\\n`));
  const shown = JSON.parse((await cli(env, ["net", "show", "lab", "--json"])).stdout) as { attached: Array<{ vmName: string; ip: string }> };
  assert.deepEqual(shown.attached.map((a) => [a.vmName, a.ip]), [["web1", "10.204.0.2"]]);
  const missing = await cli(env, ["net", "show", "nope"]);
  assert.equal(missing.status, EXIT.notFound);
  assert.match(missing.stderr, /Network "nope" does not exist/);

  await d.deps.network.detach(vm.id, "net0");
  for (const name of ["lab", "iso"]) {
    const del = await cli(env, ["net", "delete", name]);
    assert.equal(del.status, 0, del.stderr);
    assert.equal(del.stdout, `Network ${name} deleted\n`);
  }
  assert.doesNotMatch(netnsList(), new RegExp(`^${ns}\\b`, "m"), "the last network took the netns along");
});
