/**
 * Reading and verifying the audit log as guarded operations (needs audit.read). Listing is open to an actor
 * without it too, showing only the records the Guard's `mayReadRecord` lets it read (those about VMs it may
 * read): the same rule as the events stream, so `GET /v1/audit` and `GET /v1/events` show the same records.
 */
import type { Guard, RequestContext } from "../auth/guard.ts";
import type { OwnerRef } from "../auth/permissions.ts";
import type { AuditHealth, AuditLog, ConsistencyProof, InclusionProof } from "./audit-log.ts";
import type { HashedRecord, TreeHead, VerifyResult } from "./chain.ts";

export class AuditService {
  constructor(
    private readonly log: AuditLog,
    private readonly guard: Guard,
    /** Every VM's owner by id: what record visibility is decided on for an actor without audit.read. */
    private readonly vmOwners: () => Promise<Map<string, OwnerRef>> = async () => new Map(),
  ) {}

  private read(ctx: RequestContext, action: string) {
    return this.guard.authorize(ctx, { action, permission: "audit.read", target: { kind: "audit" }, readOnly: true });
  }

  async list(ctx: RequestContext, options: { afterSeq?: number; limit?: number; tail?: boolean }): Promise<HashedRecord[]> {
    const access = await this.guard.authorizeRecords(ctx, "audit.list");
    if (access.all) return this.log.list(options);
    // Only records whose target is a VM this actor may read: selected in SQL by target id (so `limit` and
    // `after` page through what it may read), then each still passes the Guard's rule.
    const owners = await this.vmOwners();
    const ids = [...owners].filter(([id, owner]) => access.mayRead({ target: { id } }, owner)).map(([id]) => id);
    if (ids.length === 0) return [];
    const records = await this.log.list({ ...options, targetIds: ids });
    return records.filter((r) => access.mayRead(r, r.target.id === null ? undefined : owners.get(r.target.id)));
  }

  async verify(ctx: RequestContext): Promise<VerifyResult> {
    await this.read(ctx, "audit.verify");
    return this.log.verify();
  }

  async head(ctx: RequestContext): Promise<{ head: TreeHead; keyId: string; publicKey: string; health: AuditHealth }> {
    await this.read(ctx, "audit.head");
    return { head: this.log.currentHead(), keyId: this.log.keyId, publicKey: this.log.publicKeyPem, health: await this.log.health() };
  }

  async prove(ctx: RequestContext, seq: number): Promise<InclusionProof> {
    await this.read(ctx, "audit.prove");
    return this.log.inclusionProof(seq);
  }

  async consistency(ctx: RequestContext, fromSize: number): Promise<ConsistencyProof> {
    await this.read(ctx, "audit.consistency");
    return this.log.consistencyProof(fromSize);
  }

  async export(ctx: RequestContext): Promise<AsyncGenerator<string>> {
    await this.read(ctx, "audit.export");
    return this.log.exportLines();
  }
}
