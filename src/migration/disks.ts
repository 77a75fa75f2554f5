/**
 * The disks of a VM arriving here (docs/cluster.md, step 3): each one an overlay over the same base image when
 * this host has it (same name, same digest: the mirror then only sends the top layer, sync "top"), else an empty
 * image of exactly the source's virtual size (sync "full"). A cold move copies the source's disks in instead
 * (`copyDiskIn`). Files are made 0600 in the VM's private directory and registered as its data.
 */
import { existsSync } from "node:fs";
import { VigilError, q } from "../errors.ts";
import { vmLayout } from "../paths.ts";
import { ensurePrivateDir } from "../host/private-dir.ts";
import { QEMU_IMG, makePrivate } from "../qemu/qemu-img.ts";
import { runCommand } from "../util/run-command.ts";
import { diskFile } from "../vm/vm-view.ts";
import type { DossierDeps, IncomingDiskPlan } from "./dossier.ts";

/** What the migration engine needs per disk (precopy.ts): the node QEMU's argv names it, its NBD export, the file. */
export interface IncomingDisk {
  /** The top qcow2 node of the disk in QEMU's argv (qemu/argv.ts names it after the disk). */
  node: string;
  exportName: string;
  path: string;
  sync: "top" | "full";
}

/** One image: an overlay over `base` or a blank one, of exactly `virtualSize` bytes, 0600. */
async function createImage(file: string, virtualSize: number, base: string | undefined): Promise<void> {
  const args = ["create", "-q", "-f", "qcow2", ...(base !== undefined ? ["-F", "qcow2", "-b", base] : []), file, String(virtualSize)];
  await runCommand(QEMU_IMG, args, { what: "Creating an incoming disk" });
  makePrivate(file);
}

async function incomingVm(deps: DossierDeps, vmId: string) {
  const vm = await deps.vms.recordById(vmId);
  if (vm.state !== "incoming") throw new VigilError("VIGIL_INVALID_STATE", `Cannot prepare the disks of VM ${q(vm.name)}: it is ${vm.state}, not incoming`);
  // Its disks are the source's own files on the shared storage: a copy here (and a mirror into it) would fork them.
  if (vm.spec.storage === "shared") throw new VigilError("VIGIL_CONFLICT", `Cannot move VM ${q(vm.name)} by migration yet: its disks are on shared storage (the mirror-less migration is not built); an HA restart can start it elsewhere`, { field: "storage" });
  return vm;
}

/**
 * Creates the incoming VM's disks as `plans` (from `importDossier`) say and registers them. A failure leaves the
 * disks made so far; the caller aborts the incoming VM, which erases its directory.
 */
export async function prepareIncomingDisks(deps: DossierDeps, vmId: string, plans: readonly IncomingDiskPlan[]): Promise<IncomingDisk[]> {
  const vm = await incomingVm(deps, vmId);
  const l = vmLayout(deps.vmsDir, vm.id);
  ensurePrivateDir(deps.vmsDir);
  ensurePrivateDir(l.dir);
  ensurePrivateDir(l.disksDir);
  const out: IncomingDisk[] = [];
  for (const disk of vm.spec.disks) {
    const plan = plans.find((p) => p.name === disk.name);
    if (!plan) throw new VigilError("VIGIL_BAD_REQUEST", `Cannot prepare the disks of VM ${q(vm.name)}: no plan for its disk ${q(disk.name)}`, { field: "disks" });
    if (plan.base !== disk.backing) throw new VigilError("VIGIL_BAD_REQUEST", `Cannot prepare the disks of VM ${q(vm.name)}: the plan for disk ${q(disk.name)} does not match its spec`, { field: "disks" });
    const path = diskFile(l.disksDir, disk.name);
    if (existsSync(path)) throw new VigilError("VIGIL_CONFLICT", `Cannot prepare the disks of VM ${q(vm.name)}: disk ${q(disk.name)} exists already`, { field: "disks" });
    await createImage(path, plan.virtualSize, plan.base);
    await deps.registry.register(vm.id, path, "disk", { hash: false });
    out.push({ node: disk.name, exportName: disk.name, path, sync: plan.base !== undefined ? "top" : "full" });
  }
  return out;
}

/**
 * A cold move's disk: the source's disk (read with its chain) written here as one image — only what differs from
 * `base` when this host has the same base (an overlay over it), else all of its content. `qemu-img convert` reads
 * the source, never runs a guest. Registered as the VM's data.
 */
export async function copyDiskIn(deps: DossierDeps, vmId: string, plan: IncomingDiskPlan, sourcePath: string): Promise<IncomingDisk> {
  const vm = await incomingVm(deps, vmId);
  const l = vmLayout(deps.vmsDir, vm.id);
  ensurePrivateDir(deps.vmsDir);
  ensurePrivateDir(l.dir);
  ensurePrivateDir(l.disksDir);
  const path = diskFile(l.disksDir, plan.name);
  if (existsSync(path)) throw new VigilError("VIGIL_CONFLICT", `Cannot copy the disk ${q(plan.name)} of VM ${q(vm.name)}: it exists already`, { field: "disks" });
  const over = plan.base !== undefined ? ["-B", plan.base, "-F", "qcow2"] : [];
  await runCommand(QEMU_IMG, ["convert", "-q", "-f", "qcow2", "-O", "qcow2", ...over, sourcePath, path], { what: `Copying disk ${q(plan.name)}`, timeoutMs: 60 * 60_000 });
  makePrivate(path);
  await deps.registry.register(vm.id, path, "disk", { hash: false });
  return { node: plan.name, exportName: plan.name, path, sync: plan.base !== undefined ? "top" : "full" };
}
