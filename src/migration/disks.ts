/**
 * The disks of a VM arriving here (docs/cluster.md, step 3): each one an overlay over the same base image when
 * this host has it (same name, same digest: the mirror then only sends the top layer, sync "top"), else an empty
 * image of exactly the source's virtual size (sync "full"). A cold move copies the source's disks in instead
 * (`copyDiskIn`). Files are made 0600 in the VM's private directory and registered as its data.
 */
import { existsSync, lstatSync } from "node:fs";
import { VigilError, q } from "../errors.ts";
import { vmLayout } from "../paths.ts";
import { ensurePrivateDir } from "../host/private-dir.ts";
import { QEMU_IMG, makePrivate } from "../qemu/qemu-img.ts";
import { runCommand } from "../util/run-command.ts";
import { diskFile } from "../vm/vm-view.ts";
import type { VmRecord } from "../vm/vm-repository.ts";
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
  return vm;
}

/**
 * A shared-storage VM's disks on a live move: the very files the source runs on, on the storage both hosts mount
 * (a copy here, or a mirror into one, would fork them). Each must be there, a regular file; it is registered as
 * this host's data of the VM (so a purge here erases it) and nothing is mirrored: QEMU hands the image over at the
 * switchover (the target opens it inactive until then; the source inactivates its own before the target runs).
 */
async function sharedIncomingDisks(deps: DossierDeps, vm: VmRecord): Promise<IncomingDisk[]> {
  const l = deps.vms.layoutOf(vm); // refuses, naming storage, on a host without shared storage
  ensurePrivateDir(deps.vmsDir);
  ensurePrivateDir(l.dir);
  for (const disk of vm.spec.disks) {
    const path = diskFile(l.disksDir, disk.name);
    const st = lstatSync(path, { throwIfNoEntry: false });
    if (!st?.isFile()) throw new VigilError("VIGIL_CONFLICT", `Cannot receive VM ${q(vm.name)}: its disk ${q(disk.name)} is not on this host's shared storage at ${q(path)} (is the same storage mounted at the same path?)`, { field: "storage" });
    await deps.registry.register(vm.id, path, "disk", { hash: false });
  }
  return [];
}

/**
 * Creates the incoming VM's disks as `plans` (from `importDossier`) say and registers them. A failure leaves the
 * disks made so far; the caller aborts the incoming VM, which erases its directory.
 */
export async function prepareIncomingDisks(deps: DossierDeps, vmId: string, plans: readonly IncomingDiskPlan[]): Promise<IncomingDisk[]> {
  const vm = await incomingVm(deps, vmId);
  if (vm.spec.storage === "shared") return sharedIncomingDisks(deps, vm);
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
  // A copy of a shared VM's disk would fork it: a stopped shared VM is started elsewhere by HA, or moved live.
  if (vm.spec.storage === "shared") throw new VigilError("VIGIL_CONFLICT", `Cannot move VM ${q(vm.name)} cold: its disks are on shared storage (a copy would fork them); start it and move it live`, { field: "storage" });
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
