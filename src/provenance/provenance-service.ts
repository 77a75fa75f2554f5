/**
 * Ownership and provenance as operations: who owns a VM (chown, with the approver recorded), where it came from
 * and where it has been (history), and where its data lives or lived (where). A destroyed VM is still
 * answerable by name: its id is found through the audit log, and its registry and location entries remain.
 */
import { z } from "zod";
import type { AuditLog } from "../audit/audit-log.ts";
import type { HashedRecord } from "../audit/chain.ts";
import type { Guard, RequestContext } from "../auth/guard.ts";
import type { UserStore } from "../auth/users.ts";
import type { Db } from "../inventory/db.ts";
import { VigilError, errors, q } from "../errors.ts";
import { parseOrThrow } from "../validation.ts";
import type { Lineage, VmRecord, VmRepository } from "../vm/vm-repository.ts";
import type { DataFile, DataRegistry } from "./data-registry.ts";
import type { Location, LocationHistory } from "./locations.ts";

export const chownSchema = z.strictObject({
  owner: z.string().regex(/^(user|group):[a-z_][a-z0-9_.-]{0,63}$/, "must be user:NAME or group:NAME"),
  approver: z.string().min(1).max(64),
  reason: z.string().max(500).optional(),
});

export interface VmHistory {
  id: string;
  name: string;
  exists: boolean;
  owner: string | null;
  createdBy: string | null;
  createdAt: string | null;
  lineage: Lineage | null;
  locations: Location[];
  events: HashedRecord[];
}

export class ProvenanceService {
  constructor(
    private readonly db: Db,
    private readonly repo: VmRepository,
    private readonly registry: DataRegistry,
    private readonly locations: LocationHistory,
    private readonly audit: AuditLog,
    private readonly guard: Guard,
    private readonly users: UserStore,
  ) {}

  /** A live VM, or the id and last known owner of a destroyed one with that name. */
  private async resolve(name: string): Promise<{ id: string; name: string; owner: string; vm: VmRecord | undefined }> {
    const vm = await this.repo.findByName(name);
    if (vm) return { id: vm.id, name: vm.name, owner: vm.owner, vm };
    const created = await this.db
      .selectFrom("audit_log")
      .select(["target_id", "details"])
      .where("target_kind", "=", "vm")
      .where("target_name", "=", name)
      .where("action", "in", ["vm.create", "vm.clone", "vm.import"])
      .where("result", "=", "ok")
      .orderBy("seq", "desc")
      .limit(1)
      .executeTakeFirst();
    if (!created?.target_id) throw errors.vmNotFound(name);
    const details = JSON.parse(created.details) as { owner?: string };
    return { id: created.target_id, name, owner: details.owner ?? "user:?", vm: undefined };
  }

  /** A VM (or destroyed VM) the actor may not read is answered like one that never existed, audited as denied. */
  private async resolveFor(ctx: RequestContext, name: string, action: string): Promise<Awaited<ReturnType<ProvenanceService["resolve"]>>> {
    const r = await this.resolve(name).catch((err: unknown) => {
      if (err instanceof VigilError && err.code === "VIGIL_VM_NOT_FOUND") return undefined;
      throw err;
    });
    await this.guard.authorizeOrHide(ctx, { action, permission: "vm.read", target: { kind: "vm", name }, owner: r?.owner, readOnly: true }, errors.vmNotFound(name));
    if (!r) throw errors.vmNotFound(name);
    return r;
  }

  async history(ctx: RequestContext, name: string): Promise<VmHistory> {
    const r = await this.resolveFor(ctx, name, "vm.history");
    await this.guard.authorize(ctx, { action: "vm.history", permission: "vm.read", target: { kind: "vm", id: r.id, name }, owner: r.owner, readOnly: true });
    const events = await this.audit.list({ targetId: r.id, limit: 10_000 });
    return {
      id: r.id,
      name: r.name,
      exists: r.vm !== undefined,
      owner: r.vm?.owner ?? r.owner,
      createdBy: r.vm?.createdBy ?? events.find((e) => e.result === "ok")?.actor ?? null,
      createdAt: r.vm?.createdAt ?? events[0]?.time ?? null,
      lineage: r.vm?.lineage ?? null,
      locations: await this.locations.list(r.id),
      events,
    };
  }

  async where(ctx: RequestContext, name: string): Promise<{ id: string; name: string; live: DataFile[]; removed: DataFile[] }> {
    const r = await this.resolveFor(ctx, name, "vm.where");
    await this.guard.authorize(ctx, { action: "vm.where", permission: "vm.read", target: { kind: "vm", id: r.id, name }, owner: r.owner, readOnly: true });
    const all = await this.registry.list(r.id, { includeRemoved: true });
    return { id: r.id, name: r.name, live: all.filter((f) => f.removedAt === null), removed: all.filter((f) => f.removedAt !== null) };
  }

  /** Transfers ownership; the approver is required and recorded with the previous owner. */
  async chown(ctx: RequestContext, name: string, input: unknown): Promise<{ id: string; name: string; owner: string; previousOwner: string; approver: string }> {
    const vm = (await this.resolveFor(ctx, name, "vm.chown")).vm ?? (await this.repo.getByName(name));
    return this.guard.run(
      ctx,
      { action: "vm.chown", permission: "vm.chown", target: { kind: "vm", id: vm.id, name: vm.name }, owner: vm.owner },
      async () => {
        const req = parseOrThrow(chownSchema, input, "ownership change");
        await this.users.checkApprover(req.approver, ctx.actor.name, `Cannot transfer VM ${q(name)}`);
        const [kind, who] = req.owner.split(":") as [string, string];
        const exists = kind === "user" ? (await this.users.findByName(who)) !== undefined : await this.users.groupExists(who);
        if (!exists) throw new VigilError("VIGIL_BAD_REQUEST", `Cannot transfer VM ${q(name)}: owner ${q(req.owner)} does not exist`, { field: "owner" });
        await this.repo.update(vm.id, { owner: req.owner, approver: req.approver });
        return { id: vm.id, name: vm.name, owner: req.owner, previousOwner: vm.owner, approver: req.approver };
      },
      (r) => ({ owner: r.owner, previousOwner: r.previousOwner, approver: r.approver }),
    );
  }
}
