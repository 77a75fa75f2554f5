/**
 * A daemon wired to a test Lab (testing/lab.ts: real nftables and veths in namespaces the test creates), with two
 * VM records ("web", "client") whose NICs are the lab's: firewall and quarantine tests without booting a guest.
 */
import type { TestContext } from "node:test";
import type { Daemon } from "../../../daemon/daemon.ts";
import { cli, daemon } from "../../../cli/testing/cli-run.ts";
import { createVmRequestSchema, resolveSpec } from "../../../vm/spec.ts";
import { Lab, type LabVm } from "./lab.ts";

export async function insertLabVm(d: Daemon, vm: LabVm, state: "running" | "stopped" = "running"): Promise<void> {
  const spec = resolveSpec(createVmRequestSchema.parse({ name: vm.nic.vmName, memoryMiB: 128 }), { name: "tiny", boot: { kind: "kernel", kernel: "/k", initrd: "/i", cmdline: "" }, disk: "/d" }, { cpu: "max" });
  await d.repo.insert({ id: vm.nic.vmId, name: vm.nic.vmName, spec, state, host: "h", vmgenid: crypto.randomUUID(), generation: 1, owner: "user:root", approver: null, purpose: null, expiresAt: null, labels: vm.nic.labels, lineage: { kind: "image", image: "tiny" }, isTemplate: false, createdBy: "root", createdAt: new Date().toISOString() });
}

export async function labDaemon(t: TestContext, labels: { web?: Record<string, string>; client?: Record<string, string> } = {}) {
  const lab = new Lab();
  t.after(() => lab.close());
  await lab.start();
  const web = await lab.addVm("web", labels.web ?? {}, crypto.randomUUID());
  const client = await lab.addVm("client", labels.client ?? {}, crypto.randomUUID());
  const { d, env } = await daemon(t);
  await insertLabVm(d, web);
  await insertLabVm(d, client);
  d.deps.firewall.connect(lab);
  await d.deps.firewall.engine.apply();
  await lab.serve(web, 80);
  const vigil = async (...args: string[]) => cli(env, args);
  return { lab, web, client, d, vigil };
}
