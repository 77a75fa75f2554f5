/**
 * Templates and clones ("rapid provisioning", "libraries of pre-configured test machines").
 *
 * A template is a stopped VM frozen read-only: it cannot be started, snapshotted or reverted, and it cannot be
 * deleted while linked clones depend on it. A linked clone's disks are qcow2 overlays on the template's disks;
 * since a fresh overlay on a given backing file is always the same bytes, vigil makes one prototype overlay per
 * template disk when the template is frozen and copies it per clone (as fast as a file copy). A full clone is an
 * independent flattened copy (`qemu-img convert`, with progress). Every clone is a new machine: new UUID, MACs,
 * vmgenid, name, its own vtime namespace; lineage records the source, the snapshot and the mode.
 */
import { chmodSync, copyFileSync, existsSync, mkdirSync, rmSync, statSync } from "node:fs";
import type { ImageView } from "../image/catalog.ts";
import { join } from "node:path";
import { VigilError, q } from "../errors.ts";
import type { RequestContext } from "../auth/guard.ts";
import { can, type Actor } from "../auth/permissions.ts";
import { createOverlay, makePrivate, QEMU_IMG } from "../qemu/qemu-img.ts";
import { spawnWithProgress } from "../util/progress-command.ts";
import type { ProgressBus } from "../util/progress.ts";
import type { VmService } from "../vm/vm-service.ts";
import { randomMac, vmNameSchema, type VmSpec } from "../vm/spec.ts";
import { diskFile, type VmView } from "../vm/vm-view.ts";
import type { VmRecord, VmRepository } from "../vm/vm-repository.ts";
import { parseOrThrow } from "../validation.ts";
import type { SnapshotRepository } from "./snapshot-repository.ts";
import type { ReapplyHook, RevertPolicy } from "./snapshots.ts";
import type { PolicyCarrier } from "./policy-carrier.ts";
import { freezeSnapshotBase } from "./snapshots.ts";

/** Where a template keeps the prototype overlay of each disk and the frozen bases of its snapshots. */
export function templateFiles(vmDir: string) {
  return {
    protoDir: join(vmDir, "proto"),
    proto: (disk: string) => join(vmDir, "proto", `${disk}.qcow2`),
    snapBase: (snapshot: string, disk: string) => join(vmDir, "snapbases", `${snapshot}-${disk}.qcow2`),
  };
}

/** The spec of a clone: the source's, with the new name in the spec and on the kernel command line, fresh MACs. */
export function cloneSpec(src: VmSpec, name: string, backing: (disk: string) => string | undefined): VmSpec {
  const boot: VmSpec["boot"] =
    src.boot.kind === "kernel" ? { ...src.boot, cmdline: src.boot.cmdline.replace(/(^| )vigil\.hostname=\S*/, "$1vigil.hostname=" + name) } : src.boot;
  return {
    ...src,
    name,
    boot,
    disks: src.disks.map((d) => {
      const b = backing(d.name);
      const { backing: _old, ...rest } = d;
      return b ? { ...rest, backing: b } : rest;
    }),
    nics: src.nics.map((n) => ({ ...n, mac: randomMac() })),
  };
}

export interface CloneOptions {
  mode?: "linked" | "full" | undefined;
  fromSnapshot?: string | undefined;
  purpose?: string | undefined;
  approver?: string | undefined;
  expiresAt?: string | undefined;
  /** A clone from a snapshot below the source's security floor needs both, exactly like a revert to it. */
  force?: boolean | undefined;
  reason?: string | undefined;
}

export class CloneService {
  constructor(
    private readonly vms: VmService,
    private readonly repo: VmRepository,
    private readonly snapshots: SnapshotRepository,
    private readonly progress: ProgressBus,
    private readonly vmsDir: string,
    /** The rollback policy of reverts (vtime's), applied to a clone's snapshot, and the hook a forced one runs. */
    private readonly rollback: { policy: RevertPolicy; reapply: ReapplyHook },
    /** The source's firewall policy follows the clone (storage/policy-carrier.ts). */
    private readonly policies?: PolicyCarrier,
    /** The source's last scan follows a clone of its current disk (posture/posture-transfer.ts; posture sits above storage). */
    private readonly posture?: { copyToClone(source: VmRecord, clone: VmRecord): Promise<void> },
  ) {}

  /** Freezes a stopped VM as a read-only template (or, with `undo`, thaws one that no clone depends on). */
  async template(ctx: RequestContext, name: string, options: { undo?: boolean | undefined } = {}): Promise<VmView> {
    return this.vms.operate(ctx, name, { action: options.undo ? "vm.untemplate" : "vm.template", permission: "vm.modify" }, async (h) => {
      const vm = h.vm;
      const files = templateFiles(h.layout.dir);
      if (options.undo) {
        if (!vm.isTemplate) throw new VigilError("VIGIL_INVALID_STATE", `Cannot thaw VM ${q(vm.name)}: it is not a template`);
        await this.assertNoDependents(vm, "thaw");
        for (const d of vm.spec.disks) chmodSync(diskFile(h.layout.disksDir, d.name), 0o600);
        rmSync(files.protoDir, { recursive: true, force: true });
        return this.vms.describeVm(await h.update({ isTemplate: false }));
      }
      if (vm.isTemplate) throw new VigilError("VIGIL_INVALID_STATE", `VM ${q(vm.name)} is a template already`);
      if (vm.state !== "stopped" && vm.state !== "crashed") throw new VigilError("VIGIL_INVALID_STATE", `Cannot make VM ${q(vm.name)} a template: it is ${vm.state} (stop it first)`);
      mkdirSync(files.protoDir, { recursive: true, mode: 0o700 });
      for (const d of vm.spec.disks) {
        const file = diskFile(h.layout.disksDir, d.name);
        await createOverlay(files.proto(d.name), file);
        chmodSync(file, 0o400); // read-only from now on: clones read it, nothing writes it
      }
      return this.vms.describeVm(await h.update({ isTemplate: true }));
    });
  }

  private async assertNoDependents(vm: VmRecord, verb: string): Promise<void> {
    const deps = await this.repo.dependentsOf(vm.id);
    if (deps.length > 0) {
      throw new VigilError("VIGIL_CONFLICT", `Cannot ${verb} template ${q(vm.name)}: linked clones depend on it (${deps.map((d) => d.name).join(", ")})`);
    }
  }

  /**
   * Templates as images ("libraries of pre-configured test machines"): description, size, lineage. Only the
   * templates `actor` may read (as a VM: owner, group, or a role that reads every VM), and of their linked
   * clones only those it may read too — another tenant's template or clone names are nobody else's business.
   */
  async templateImages(actor: Actor): Promise<ImageView[]> {
    const all = await this.repo.list();
    const out: ImageView[] = [];
    for (const vm of all.filter((v) => v.isTemplate && can(actor, "vm.read", v.owner))) {
      const dir = join(this.vmsDir, vm.id);
      const sizeBytes = vm.spec.disks.reduce((n, d) => n + (existsSync(diskFile(join(dir, "disks"), d.name)) ? statSync(diskFile(join(dir, "disks"), d.name)).size : 0), 0);
      out.push({
        name: vm.name,
        kind: "template",
        description: vm.purpose ?? `template of ${vm.spec.vcpus} vCPU, ${vm.spec.memoryMiB} MiB${vm.spec.image ? ` from ${vm.spec.image}` : ""}`,
        dir,
        sizeBytes,
        details: { lineage: vm.lineage, owner: vm.owner, linkedClones: (await this.repo.dependentsOf(vm.id)).filter((d) => can(actor, "vm.read", d.owner)).map((d) => d.name), clone: `vigil vm clone ${vm.name} NAME` },
      });
    }
    return out;
  }

  async clone(ctx: RequestContext, source: string, newName: string, options: CloneOptions = {}): Promise<VmView> {
    parseOrThrow(vmNameSchema, newName, "clone name");
    if (options.reason !== undefined && !options.force) {
      throw new VigilError("VIGIL_BAD_REQUEST", `Cannot clone VM ${q(source)}: a "reason" is only accepted with "force" (a clone from a snapshot below the security floor)`, { field: "reason" });
    }
    await this.vms.lookup(ctx, source, "vm.clone"); // a source the actor may not read is a 404 before anything else
    await this.vms.authorizeAlso(ctx, "vm.clone", "vm.create", { kind: "vm", name: newName }, { source });
    // A clone is a full copy of the source's data, owned by the caller: the same right as an export, not a read.
    return this.vms.operate(
      ctx,
      source,
      { action: "vm.clone", permission: "vm.export", details: { clone: newName, mode: options.mode ?? "auto", fromSnapshot: options.fromSnapshot, force: options.force ?? false, reason: options.reason } },
      async (h) => {
        const src = h.vm;
        const mode = options.mode ?? (src.isTemplate ? "linked" : "full");
        if (mode === "linked" && !src.isTemplate) {
          throw new VigilError("VIGIL_INVALID_STATE", `Cannot make a linked clone of VM ${q(src.name)}: it is not a template (run: vigil vm template ${src.name}), or use --full`, { field: "mode" });
        }
        const snap = options.fromSnapshot ? await this.snapshots.get(src.id, src.name, options.fromSnapshot) : undefined;
        // A clone from a snapshot is a way back to that state: the revert policy decides, before anything is made.
        // Only the disk state is copied (never saved RAM), so single use does not apply; the floor does.
        let forced = false;
        if (snap) {
          try {
            forced = (await this.rollback.policy(src, { ...snap, kind: "disk" }, { force: options.force ?? false, reason: options.reason })).forced;
          } catch (err) {
            if (err instanceof VigilError) throw new VigilError(err.code, err.message.replace(/^Cannot revert VM (\S+) to snapshot/, "Cannot clone VM $1 from snapshot").replace(/^A forced revert/, "A forced clone"), { field: err.field === "snapshot" ? "fromSnapshot" : err.field });
            throw err;
          }
        }
        if (!snap && mode === "full" && src.state !== "stopped" && src.state !== "crashed" && !src.isTemplate) {
          throw new VigilError("VIGIL_INVALID_STATE", `Cannot copy VM ${q(src.name)}: it is ${src.state} (stop it, or clone --from-snapshot)`);
        }
        // The source's approval, purpose and expiry cover its copies unless the request says otherwise.
        const ownership = { purpose: options.purpose ?? src.purpose, approver: options.approver ?? src.approver, expiresAt: options.expiresAt ?? src.expiresAt };
        // Checked before a snapshot base is frozen: a refused clone leaves nothing behind.
        this.vms.checkOwnershipPolicy(`Cannot create VM ${q(newName)} (clone)`, ownership);
        const files = templateFiles(h.layout.dir);
        const srcDisk = (d: string) => diskFile(h.layout.disksDir, d);
        if (mode === "linked" && snap) {
          // A frozen, flattened base per (snapshot, disk), made once and shared by every clone from it.
          mkdirSync(join(h.layout.dir, "snapbases"), { recursive: true, mode: 0o700 });
          for (const d of src.spec.disks) {
            const base = files.snapBase(snap.name, d.name);
            if (!existsSync(base)) {
              await freezeSnapshotBase(srcDisk(d.name), snap.name, base, (pct) => this.progress.emit({ requestId: ctx.requestId, what: `freeze ${d.name}`, current: pct, total: 100 }));
            }
          }
        }
        const spec = cloneSpec(snap?.spec ?? src.spec, newName, (d) => (mode !== "linked" ? undefined : snap ? files.snapBase(snap.name, d) : srcDisk(d)));
        const created = await this.vms.createDerived(ctx, {
          spec,
          owner: `user:${ctx.actor.name}`,
          lineage: { kind: "clone", sourceVm: { id: src.id, name: src.name }, ...(snap ? { snapshot: snap.name } : {}), linked: mode === "linked" },
          baseVmId: mode === "linked" ? src.id : undefined,
          ...ownership,
          labels: src.labels,
          // The copy keeps the source's floor, whatever state it was taken from: it may never go below it either.
          securityFloor: src.securityFloor,
          reason: "clone",
          prepareDisks: async (l) => {
            for (const d of spec.disks) {
              const dst = diskFile(l.disksDir, d.name);
              if (mode === "linked" && !snap) copyFileSync(files.proto(d.name), dst);
              else if (mode === "linked") await createOverlay(dst, d.backing!);
              else {
                const args = ["convert", "-p", "-O", "qcow2", ...(snap ? ["-l", `snapshot.name=${snap.name}`] : []), srcDisk(d.name), dst];
                await spawnWithProgress(QEMU_IMG, args, (pct) => this.progress.emit({ requestId: ctx.requestId, what: `copy ${d.name}`, current: pct, total: 100 }));
              }
              // A copy of a template's prototype (0600 already, but copyFile takes the source's mode) or a fresh
              // qemu-img file: either way the clone's disk is private.
              makePrivate(dst);
            }
          },
        });
        if (this.policies) await this.policies.adopt(ctx, created, await this.policies.exportPolicy(src.id), `clone source VM ${src.name} (${src.id})`);
        // From a snapshot the scan does not describe the disk the clone got: it starts unscanned (`unknown`).
        if (this.posture && !snap) await this.posture.copyToClone(src, created);
        if (forced && snap) await this.rollback.reapply(created, snap, options.reason ?? "");
        return this.vms.describeVm(created);
      },
      (v) => ({ cloneId: v.id, clone: v.name, vmgenid: v.vmgenid, linked: v.lineage.linked }),
    );
  }
}
