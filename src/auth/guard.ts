/**
 * The one place an operation is authorized and audited. Every service method that changes state runs through
 * `Guard.run`: it checks the permission (deny by default), runs the operation, and appends one audit record with
 * the outcome — ok, denied or error. A refusal the operation itself raises (VIGIL_FORBIDDEN from inside `fn`) is
 * recorded `denied` too, not `error`. Reads are checked too, and recorded only when denied.
 *
 * Destructive operations (DESTRUCTIVE_ACTIONS) are audited before they run as well: a record with result
 * `intent` is appended first, and if that append fails (disk full, database gone) the operation does not run — fail
 * closed, as auditd's disk_full_action=halt would. The outcome record names the intent's seq, so a crash between
 * the two leaves an intent without an outcome, never an action without a record.
 */
import { VigilError, q } from "../errors.ts";
import type { AuditLog } from "../audit/audit-log.ts";
import { can, mayFollowProgress, mayReadRecord, readsAuditRecords, type Actor, type OwnerRef, type Permission, type RecordTarget } from "./permissions.ts";

export interface RequestContext {
  actor: Actor;
  requestId: string;
}

export interface OperationDescription {
  /** Audit action name, e.g. "vm.start". */
  action: string;
  /** "self": any authenticated actor acting on their own account (e.g. issuing their own token). */
  permission: Permission | "self";
  target: { kind: string; id?: string | null | undefined; name?: string | null | undefined };
  /** Owner of the VM acted on, for ownership-scoped grants. */
  owner?: OwnerRef | undefined;
  details?: Record<string, unknown> | undefined;
  /** For operations that create their target: its id, known only from the result. */
  targetIdOf?: (result: never) => string;
  /** Reads are audited only when denied. */
  readOnly?: boolean;
}

/** Operations that destroy or hand away what cannot be restored: audited before they run (fail closed). */
export const DESTRUCTIVE_ACTIONS: ReadonlySet<string> = new Set(["vm.destroy", "vm.purge", "vm.chown", "snapshot.revert"]);

const errorDetails = (err: unknown) => (err instanceof VigilError ? { code: err.code, message: err.message } : { code: "VIGIL_INTERNAL", message: String(err) });
const isRefusal = (err: unknown) => err instanceof VigilError && err.code === "VIGIL_FORBIDDEN";

export class Guard {
  constructor(private readonly audit: AuditLog) {}

  /** Throws (and audits) if the actor may not do the operation. */
  async authorize(ctx: RequestContext, op: OperationDescription): Promise<void> {
    const allowed =
      op.permission === "self" ? op.target.kind === "user" && op.target.name === ctx.actor.name : can(ctx.actor, op.permission, op.owner);
    if (allowed) return;
    const what = op.target.name ? `${op.target.kind} ${q(op.target.name)}` : op.target.kind;
    await this.audit.append({
      actor: ctx.actor.name,
      action: op.action,
      target: op.target,
      result: "denied",
      requestId: ctx.requestId,
      details: { ...op.details, permission: op.permission },
    });
    throw new VigilError("VIGIL_FORBIDDEN", `Permission denied: user ${q(ctx.actor.name)} may not ${op.action} on ${what} (needs ${op.permission})`);
  }

  /**
   * Authorizes reading audit records (`action`, e.g. "audit.list"): `all` with `audit.read`; otherwise the caller
   * keeps only the records `mayRead` (= `mayReadRecord` for this actor) allows — those about VMs it may read. An
   * actor who can read no record at all is refused like `authorize` would (audited denied, needs audit.read).
   */
  async authorizeRecords(ctx: RequestContext, action: string): Promise<{ all: boolean; mayRead: (record: RecordTarget, vmOwner: OwnerRef | undefined) => boolean }> {
    if (!readsAuditRecords(ctx.actor)) await this.authorize(ctx, { action, permission: "audit.read", target: { kind: "audit" }, readOnly: true });
    return { all: can(ctx.actor, "audit.read"), mayRead: (record, vmOwner) => mayReadRecord(ctx.actor, record, vmOwner) };
  }

  /**
   * Whether the actor may follow the progress of request `requestId`, sent by `sentBy` (see `mayFollowProgress`).
   * "unknown" while nobody has sent it yet (nothing is shown, nothing refused); a refusal is audited `denied`
   * (action `events.progress`) before "denied" is returned — the stream goes on without that progress.
   */
  async followProgress(ctx: RequestContext, requestId: string, sentBy: string | undefined): Promise<"allowed" | "denied" | "unknown"> {
    if (mayFollowProgress(ctx.actor, sentBy)) return "allowed";
    if (sentBy === undefined) return "unknown";
    await this.audit.append({
      actor: ctx.actor.name,
      action: "events.progress",
      target: { kind: "request", name: requestId },
      result: "denied",
      requestId: ctx.requestId,
      details: { permission: "own request (or admin)" },
    });
    return "denied";
  }

  /**
   * Like `authorize` (a denial is audited as denied), but the caller is refused with `hidden` — the error for
   * an object that does not exist — so the refusal does not tell them the object exists.
   */
  async authorizeOrHide(ctx: RequestContext, op: OperationDescription, hidden: VigilError): Promise<void> {
    try {
      await this.authorize(ctx, op);
    } catch (err) {
      throw err instanceof VigilError && err.code === "VIGIL_FORBIDDEN" ? hidden : err;
    }
  }

  /**
   * Authorizes, runs `fn`, and records the outcome. `describe` adds details from the result (e.g. the new VM's
   * id) to the audit record.
   */
  async run<T>(ctx: RequestContext, op: OperationDescription, fn: () => Promise<T>, describe?: (result: T) => Record<string, unknown>): Promise<T> {
    await this.authorize(ctx, op);
    const base = { actor: ctx.actor.name, action: op.action, target: op.target, requestId: ctx.requestId };
    if (op.readOnly) {
      try {
        return await fn();
      } catch (err) {
        if (isRefusal(err)) await this.audit.append({ ...base, result: "denied", details: { ...op.details, error: errorDetails(err) } });
        throw err;
      }
    }
    let intentSeq: number | undefined;
    if (DESTRUCTIVE_ACTIONS.has(op.action)) {
      // Throws if it cannot be recorded: then the action does not run.
      intentSeq = (await this.audit.append({ ...base, result: "intent", details: op.details })).seq;
    }
    const linked = intentSeq === undefined ? {} : { intentSeq };
    let result: T;
    try {
      result = await fn();
    } catch (err) {
      await this.audit.append({ ...base, result: isRefusal(err) ? "denied" : "error", details: { ...op.details, ...linked, error: errorDetails(err) } });
      throw err;
    }
    await this.audit.append({
      ...base,
      target: op.targetIdOf ? { ...op.target, id: op.targetIdOf(result as never) } : op.target,
      result: "ok",
      details: { ...op.details, ...describe?.(result), ...linked },
    });
    return result;
  }
}
