/**
 * Posture and the network-access gate (issue 13, items 1 and 5; docs/transience.md "The gate"). A VM's posture is
 * computed from its last scan (posture-state.ts); the gate runs on every start and resume, with the guest not yet
 * running an instruction (a before-cont hook), and puts a VM that is not `current` into the quarantine zone when its
 * policy says so. A scan that makes the posture acceptable releases a VM the gate quarantined (never one an admin
 * quarantined by hand). Every decision is audited (`posture.gate`, `posture.release`).
 */
import type { AuditLog } from "../audit/audit-log.ts";
import { SYSTEM_ACTOR } from "../auth/permissions.ts";
import type { Guard, RequestContext } from "../auth/guard.ts";
import { VigilError, messageOf, q } from "../errors.ts";
import type { Logger } from "../log.ts";
import type { FirewallService } from "../network/firewall/firewall-service.ts";
import { openUserNics } from "../vm/spec.ts";
import type { VmRecord } from "../vm/vm-repository.ts";
import type { VmService } from "../vm/vm-service.ts";
import { z } from "zod";
import type { GatePolicy, PostureRepository, PostureRow, ScanRecord } from "./posture-repository.ts";
import { computePosture, DEFAULT_POSTURE_POLICY, SEVERITIES, type Posture } from "./posture-state.ts";
import { behindOf, isDormant, type Behind } from "./rescan.ts";

/** The built-in default: the gate is off until an operator turns it on (a fleet of never-scanned VMs would otherwise all wake in quarantine). */
export const DEFAULT_GATE_POLICY: GatePolicy = { ...DEFAULT_POSTURE_POLICY, gate: false };

/** Reasons the gate writes start with this, so a later scan releases only what the gate itself quarantined. */
export const GATE_REASON_PREFIX = "posture gate: ";

export const gatePolicySchema = z.strictObject({
  gate: z.boolean(),
  maxScanAgeDays: z.number().int().min(0).max(3650),
  vulnerableAt: z.enum(SEVERITIES),
});

const SCOPE = /^(default|vm:[A-Za-z0-9_.-]{1,64}|label:[a-z0-9][a-z0-9_.\/-]{0,62}=[A-Za-z0-9_.-]{0,63})$/;

export interface PostureView {
  vm: string;
  state: Posture["state"];
  reasons: string[];
  policy: GatePolicy & { scope: string };
  quarantined: { since: string; reason: string; actor: string } | null;
  lastScan: ScanRecord | null;
  lastRunningAt: string | null;
  lastPatchedAt: string | null;
}

/** One line of the stale-fleet report. */
export interface StaleReportRow extends Behind {
  vm: string;
  vmState: VmRecord["state"];
  template: boolean;
  state: Posture["state"];
  reasons: string[];
}

export interface PostureDeps {
  repo: PostureRepository;
  vms: VmService;
  firewall: FirewallService;
  guard: Guard;
  audit: AuditLog;
  log: Logger;
  /** The advisory data and rules current now (their sha256), when vigil has them. */
  current?: () => Promise<{ advisoriesSha256?: string; rulesSha256?: string }>;
  now?: () => Date;
}

export class PostureService {
  #preBootScan: ((vm: VmRecord) => Promise<unknown>) | undefined;
  #rescan: ((reason: string) => Promise<{ scanned: string[]; failed: { vm: string; error: string }[] }>) | undefined;

  constructor(private readonly d: PostureDeps) {}

  /** The fleet rescan `POST /v1/posture/rescan` runs (rescan.ts `RescanScheduler.runOnce`). */
  setRescanner(run: (reason: string) => Promise<{ scanned: string[]; failed: { vm: string; error: string }[] }>): void {
    this.#rescan = run;
  }

  /** `vigil posture rescan`: rescan now every dormant, previously scanned VM that is behind (as the system, each scan audited). */
  async rescanNow(ctx: RequestContext): Promise<{ scanned: string[]; failed: { vm: string; error: string }[] }> {
    return this.d.guard.run(ctx, { action: "posture.rescan", permission: "vm.quarantine", target: { kind: "host", name: "posture" } }, async () => {
      if (!this.#rescan) throw new VigilError("VIGIL_INVALID_STATE", "Rescans are not set up on this daemon");
      return this.#rescan(`on demand by ${ctx.actor.name}`);
    }, (r) => ({ scanned: r.scanned.length, failed: r.failed.length }));
  }

  /** The offline scan the gate runs before a gated VM's first instruction (scan-service.ts `scanLocked`). */
  setPreBootScanner(scan: (vm: VmRecord) => Promise<unknown>): void {
    this.#preBootScan = scan;
  }

  private now(): Date {
    return this.d.now?.() ?? new Date();
  }

  /** The policy that applies to a VM: its own, else the strictest of its labels', else the default. */
  async effectivePolicy(vm: Pick<VmRecord, "name" | "labels">, preloaded?: Map<string, { policy: GatePolicy }>): Promise<GatePolicy & { scope: string }> {
    const all = preloaded ?? (await this.d.repo.policies());
    const own = all.get(`vm:${vm.name}`);
    if (own) return { ...own.policy, scope: `vm:${vm.name}` };
    const byLabel: [string, GatePolicy][] = [];
    for (const [k, v] of Object.entries(vm.labels).sort(([a], [b]) => (a < b ? -1 : 1))) {
      const p = all.get(`label:${k}=${v}`)?.policy;
      if (p) byLabel.push([`label:${k}=${v}`, p]);
    }
    if (byLabel.length > 0) {
      // Several labels with policies: the strictest of each field, so adding a label never weakens the gate.
      const strict = byLabel.map(([, p]) => p).reduce((acc, p) => ({
        gate: acc.gate || p.gate,
        maxScanAgeDays: Math.min(acc.maxScanAgeDays, p.maxScanAgeDays),
        vulnerableAt: SEVERITIES.indexOf(p.vulnerableAt) < SEVERITIES.indexOf(acc.vulnerableAt) ? p.vulnerableAt : acc.vulnerableAt,
      }));
      return { ...strict, scope: byLabel.map(([s]) => s).join(",") };
    }
    const def = all.get("default");
    return { ...(def?.policy ?? DEFAULT_GATE_POLICY), scope: "default" };
  }

  /** The posture of a VM as the gate would see it now. */
  async postureOf(vm: Pick<VmRecord, "id" | "name" | "labels" | "state">, policy?: GatePolicy): Promise<Posture> {
    return this.computeFor(vm, await this.d.repo.get(vm.id), (await this.d.current?.()) ?? {}, policy ?? (await this.effectivePolicy(vm)));
  }

  private computeFor(vm: Pick<VmRecord, "state">, row: PostureRow | undefined, cur: { advisoriesSha256?: string; rulesSha256?: string }, policy: GatePolicy): Posture {
    const s = row?.scan;
    return computePosture(
      {
        ...(s ? { lastScan: { scannedAt: s.scannedAt, advisoriesSha256: s.advisoriesSha256, rulesSha256: s.rulesSha256, complete: s.complete, inBand: s.how === "in-band", pending: s.pending, findings: s.findings } } : {}),
        ...(row?.lastRunningAt ? { lastRunningAt: row.lastRunningAt } : {}),
        running: vm.state === "running" || vm.state === "paused",
        ...(cur.advisoriesSha256 !== undefined ? { currentAdvisoriesSha256: cur.advisoriesSha256 } : {}),
        ...(cur.rulesSha256 !== undefined ? { currentRulesSha256: cur.rulesSha256 } : {}),
        now: this.now(),
      },
      policy,
    );
  }

  /** The posture column of `vigil vm list`, for VMs the caller already may see: three queries whatever their number. */
  async states(vms: readonly Pick<VmRecord, "id" | "name" | "labels" | "state">[]): Promise<Map<string, Posture["state"]>> {
    const [rows, policies, cur] = await Promise.all([this.d.repo.all(), this.d.repo.policies(), this.d.current?.() ?? Promise.resolve({})]);
    const byId = new Map(rows.map((r) => [r.vmId, r]));
    const out = new Map<string, Posture["state"]>();
    for (const vm of vms) {
      const row = byId.get(vm.id);
      // Never scanned is "unknown" whatever the policy (posture-state.ts): no policy is resolved for such a VM, which
      // on a fresh site is every VM of a 10,000-VM inventory list.
      out.set(vm.id, row?.scan ? this.computeFor(vm, row, cur, await this.effectivePolicy(vm, policies)).state : "unknown");
    }
    return out;
  }

  /**
   * `vigil posture stale`: the dormant VMs (and templates) the caller may read, each with its posture and how far
   * behind its scan is (rescan.ts `behindOf`, the rule the rescans follow), worst first: by state, then the oldest scan.
   */
  async staleReport(ctx: RequestContext): Promise<StaleReportRow[]> {
    const vms = (await this.d.vms.listShared(ctx)).filter(isDormant);
    const [rows, policies, cur] = await Promise.all([this.d.repo.all(), this.d.repo.policies(), this.d.current?.() ?? Promise.resolve({})]);
    const byId = new Map(rows.map((r) => [r.vmId, r]));
    const out: StaleReportRow[] = [];
    for (const vm of vms) {
      const policy = await this.effectivePolicy(vm, policies);
      const row = byId.get(vm.id);
      const p = row?.scan ? this.computeFor(vm, row, cur, policy) : { state: "unknown" as const, reasons: ["never scanned"] };
      out.push({ vm: vm.name, vmState: vm.state, template: vm.isTemplate, state: p.state, reasons: p.reasons, ...behindOf(row, cur, policy, this.now()) });
    }
    const rank = (s: Posture["state"]) => ["infected", "vulnerable", "stale", "unknown", "current"].indexOf(s);
    return out.sort((a, b) => rank(a.state) - rank(b.state) || (b.ageDays ?? Infinity) - (a.ageDays ?? Infinity) || a.vm.localeCompare(b.vm));
  }

  /** `vigil posture VM`: needs vm.read on the VM. */
  async show(ctx: RequestContext, name: string): Promise<PostureView> {
    const vm = await this.d.vms.lookup(ctx, name, "posture.show");
    await this.d.vms.show(ctx, name); // authorizes vm.read; a VM one may not read stays hidden
    return this.view(vm);
  }

  private async view(vm: VmRecord): Promise<PostureView> {
    const policy = await this.effectivePolicy(vm);
    const row = await this.d.repo.get(vm.id);
    const p = this.computeFor(vm, row, (await this.d.current?.()) ?? {}, policy);
    const qe = (await this.d.firewall.quarantineOf(vm.id)) ?? null;
    return { vm: vm.name, state: p.state, reasons: p.reasons, policy, quarantined: qe, lastScan: row?.scan ?? null, lastRunningAt: row?.lastRunningAt ?? null, lastPatchedAt: row?.lastPatchedAt ?? null };
  }

  async listPolicies(ctx: RequestContext): Promise<{ scope: string; policy: GatePolicy; actor: string; updatedAt: string }[]> {
    // Read like the quarantine services: part of the network-access configuration every user may see.
    await this.d.guard.authorize(ctx, { action: "posture.policy.list", permission: "network.read", target: { kind: "network" }, readOnly: true });
    return [...(await this.d.repo.policies())].map(([scope, v]) => ({ scope, ...v })).sort((a, b) => (a.scope < b.scope ? -1 : 1));
  }

  /** Setting a gate policy decides who lands in quarantine: it needs vm.quarantine, as quarantining does. */
  async setPolicy(ctx: RequestContext, scope: string, input: unknown): Promise<{ scope: string; policy: GatePolicy }> {
    if (!SCOPE.test(scope)) throw new VigilError("VIGIL_BAD_REQUEST", `Invalid policy scope ${q(scope)}: use "default", "vm:NAME" or "label:KEY=VALUE"`, { field: "scope" });
    const parsed = gatePolicySchema.safeParse(input);
    if (!parsed.success) {
      const issue = parsed.error.issues[0]!;
      throw new VigilError("VIGIL_BAD_REQUEST", `Invalid gate policy: ${issue.path.join(".") || "policy"} ${issue.message}`, { field: issue.path.join(".") || "policy" });
    }
    const policy = parsed.data;
    return this.d.guard.run(ctx, { action: "posture.policy.set", permission: "vm.quarantine", target: { kind: "host", name: scope }, details: { scope, ...policy } }, async () => {
      await this.d.repo.setPolicy(scope, policy, ctx.actor.name);
      return { scope, policy };
    });
  }

  /**
   * The gate, at start or resume (before-cont: the guest has not run). A VM that is not `current` under a policy
   * with the gate on goes into quarantine; a VM the gate had quarantined earlier and that is `current` now is let out.
   * Then the VM is marked running (a scan taken before this moment no longer describes its disk).
   */
  async gate(vm: VmRecord, when: "start" | "resume"): Promise<void> {
    const policy = await this.effectivePolicy(vm);
    // Decided as of before this run: a stopped VM is not "running since the scan" yet.
    let p = await this.postureOf({ ...vm, state: "stopped" }, policy);
    // A start the gate would hold: scan the disks first (QEMU is paused before its first instruction, the disks
    // are as the VM left them), so a VM whose only fault was an old scan starts normally.
    const scanned: Record<string, unknown> = {};
    if (policy.gate && p.state !== "current" && when === "start" && this.#preBootScan) {
      try {
        await this.#preBootScan(vm);
        scanned.scannedBeforeBoot = true;
        p = await this.postureOf({ ...vm, state: "stopped" }, policy);
      } catch (err) {
        scanned.scannedBeforeBoot = false;
        scanned.scanError = messageOf(err).slice(0, 300);
      }
    }
    const qe = await this.d.firewall.quarantineOf(vm.id);
    const record = (action: string, details: Record<string, unknown>) =>
      this.d.audit.append({ actor: SYSTEM_ACTOR.name, action, target: { kind: "vm", id: vm.id, name: vm.name }, result: "ok", details: { when, state: p.state, reasons: p.reasons.slice(0, 10), scope: policy.scope, ...scanned, ...details } });
    if (policy.gate) {
      if (p.state !== "current") {
        if (!qe) {
          const open = openUserNics(vm.spec).map((n) => n.name);
          // An open user-mode NIC is slirp inside QEMU: the quarantine zone (nftables on the switch) cannot hold it.
          if (open.length > 0) throw new VigilError("VIGIL_POLICY_DENIED", `Cannot ${when} VM ${q(vm.name)}: its posture is ${p.state} (${p.reasons[0]}) and the gate would quarantine it, but its open user-mode NIC ${open.join(", ")} cannot be quarantined`, { field: "nics" });
          await this.d.firewall.gateQuarantine(vm.id, `${GATE_REASON_PREFIX}${p.state}: ${p.reasons[0]}`.slice(0, 500));
        }
        await record("posture.gate", { decision: qe ? "already in quarantine" : "quarantine" });
      } else {
        const released = qe !== undefined && qe.actor === SYSTEM_ACTOR.name && qe.reason.startsWith(GATE_REASON_PREFIX) && (await this.d.firewall.gateRelease(vm.id));
        await record("posture.gate", { decision: released ? "released" : qe ? "stays in quarantine (put there by an admin)" : "allow" });
      }
    }
    await this.d.repo.markRunning(vm.id, this.now().toISOString());
  }

  /**
   * Records a scan of a VM (the scanner calls this) and, if the VM is in quarantine because of the gate and its
   * posture is now acceptable, releases it (audited `posture.release`).
   */
  async recordScan(vm: VmRecord, scan: ScanRecord): Promise<{ posture: Posture; released: boolean }> {
    await this.d.repo.recordScan(vm.id, scan);
    const policy = await this.effectivePolicy(vm);
    const posture = await this.postureOf(vm, policy);
    const qe = await this.d.firewall.quarantineOf(vm.id);
    let released = false;
    if (posture.state === "current" && qe && qe.actor === SYSTEM_ACTOR.name && qe.reason.startsWith(GATE_REASON_PREFIX)) {
      released = await this.d.firewall.gateRelease(vm.id);
      if (released) await this.d.audit.append({ actor: SYSTEM_ACTOR.name, action: "posture.release", target: { kind: "vm", id: vm.id, name: vm.name }, result: "ok", details: { scannedAt: scan.scannedAt, how: scan.how, scope: policy.scope } });
    }
    return { posture, released };
  }
}
