/** Reading and verifying the audit log as guarded operations (needs audit.read). */
import type { Guard, RequestContext } from "../auth/guard.ts";
import type { AuditHealth, AuditLog, ConsistencyProof, InclusionProof } from "./audit-log.ts";
import type { HashedRecord, TreeHead, VerifyResult } from "./chain.ts";

export class AuditService {
  constructor(
    private readonly log: AuditLog,
    private readonly guard: Guard,
  ) {}

  private read(ctx: RequestContext, action: string) {
    return this.guard.authorize(ctx, { action, permission: "audit.read", target: { kind: "audit" }, readOnly: true });
  }

  async list(ctx: RequestContext, options: { afterSeq?: number; limit?: number; tail?: boolean }): Promise<HashedRecord[]> {
    await this.read(ctx, "audit.list");
    return this.log.list(options);
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
