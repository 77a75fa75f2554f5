/**
 * Firewall policy and quarantine as operations (docs/network.md): every change is authorized by the Guard and
 * audited (fw.change, vm.quarantine, vm.release, net.service.add/remove), checked by the kernel before it is
 * stored (a policy nft rejects is refused and nothing is written), stored as a new version, then installed on
 * this host as one nft transaction. A VM's policy changes hold the VM's operation lock; every install holds the
 * engine's lock, never the other way round.
 */
import { z } from "zod";
import type { AuditLog } from "../../audit/audit-log.ts";
import type { Guard, RequestContext } from "../../auth/guard.ts";
import { SYSTEM_ACTOR } from "../../auth/permissions.ts";
import { VigilError, q } from "../../errors.ts";
import type { Logger } from "../../log.ts";
import { parseOrThrow } from "../../validation.ts";
import type { VmService } from "../../vm/vm-service.ts";
import type { AttachedNic, SwitchView } from "../types.ts";
import type { QuarantineService } from "./compile.ts";
import { FirewallEngine, type ApplyReport } from "./firewall-engine.ts";
import type { FirewallRepository, PolicyVersion } from "./firewall-repository.ts";
import { installedFor, type InstalledChain } from "./nft.ts";
import { MAX_RULES, defaultPolicy, describeRule, parsePolicy, parseRule, parseCidr, type Policy, type Rule } from "./policy.ts";

export const quarantineSchema = z.strictObject({ reason: z.string().min(1, { message: "is required" }).max(500).regex(/^[\x20-\x7e]*$/, { message: "must be printable ASCII" }) });
export const serviceSchema = z.strictObject({
  name: z.string().regex(/^[a-z][a-z0-9-]{0,31}$/, { message: "must be 1-32 lower-case letters, digits and -, starting with a letter" }),
  ip: z.string().refine((s) => !s.includes("/") && parseCidr(s) !== null, { message: "must be an IPv4 address" }),
  proto: z.enum(["tcp", "udp"]).default("tcp"),
  port: z.number().int().min(1).max(65535),
});
export const addRuleSchema = z.strictObject({ rule: z.unknown(), at: z.number().int().min(1).optional() });
export const defaultsSchema = z.strictObject({ in: z.enum(["accept", "drop"]).optional(), out: z.enum(["accept", "drop"]).optional() });

export interface FwChange {
  vm: string;
  version: number;
  summary: string;
  installed: boolean;
  reason?: string;
  notes: string[];
}

export interface FwShow {
  vm: string;
  /** 0: the VM never had its policy changed (the default policy). */
  version: number;
  policy: Policy;
  rules: { index: number; text: string; rule: Rule; note?: string }[];
  quarantine: { since: string; reason: string; actor: string } | null;
  nics: { nic: string; network: string; tap: string; mac: string; ip: string }[];
  installed: InstalledChain[];
  lastApply: ApplyReport | null;
}

export class FirewallService {
  readonly engine: FirewallEngine;

  constructor(
    private readonly d: { repo: FirewallRepository; vms: VmService; guard: Guard; audit: AuditLog; log: Logger },
  ) {
    const repo = d.repo;
    this.engine = new FirewallEngine(
      {
        policies: async () => new Map([...(await repo.currentAll())].map(([id, v]) => [id, v.policy])),
        quarantined: async () => new Set((await repo.quarantined()).keys()),
        services: () => repo.services(),
      },
      d.log,
    );
  }

  /** Daemon wiring: the switch this host runs; register `engine.listener` with it. */
  connect(view: SwitchView): void {
    this.engine.connect(view);
  }

  private async nicsOf(vmId: string): Promise<AttachedNic[]> {
    return (await this.engine.attached()).filter((n) => n.vmId === vmId);
  }

  async show(ctx: RequestContext, name: string): Promise<FwShow> {
    const v = await this.d.vms.show(ctx, name); // authorizes vm.read (a VM one may not read stays hidden)
    await this.d.guard.authorize(ctx, { action: "fw.show", permission: "network.read", target: { kind: "vm", id: v.id, name: v.name }, readOnly: true });
    const [cur, q0, nics] = await Promise.all([this.d.repo.current(v.id), this.d.repo.quarantined(), this.nicsOf(v.id)]);
    const policy = cur?.policy ?? defaultPolicy();
    const last = this.engine.lastReport();
    const notes = new Map((last?.notes ?? []).filter((n) => n.vmId === v.id).map((n) => [n.rule, n.note]));
    const view = this.engine.switchView;
    const installed = view && nics.length > 0 ? await installedFor(view.netns(), nics.map((n) => n.tap)) : [];
    const qe = q0.get(v.id);
    return {
      vm: v.name,
      version: cur?.version ?? 0,
      policy,
      rules: policy.rules.map((rule, i) => {
        const note = notes.get(i + 1);
        return { index: i + 1, text: describeRule(rule), rule, ...(note ? { note } : {}) };
      }),
      quarantine: qe ? { since: qe.since, reason: qe.reason, actor: qe.actor } : null,
      nics: nics.map((n) => ({ nic: n.nic, network: n.network, tap: n.tap, mac: n.mac, ip: n.ip })),
      installed,
      lastApply: last ?? null,
    };
  }

  async history(ctx: RequestContext, name: string): Promise<{ vm: string; versions: PolicyVersion[] }> {
    const v = await this.d.vms.show(ctx, name);
    await this.d.guard.authorize(ctx, { action: "fw.history", permission: "network.read", target: { kind: "vm", id: v.id, name: v.name }, readOnly: true });
    return { vm: v.name, versions: await this.d.repo.history(v.id) };
  }

  /**
   * One policy change: `mutate` gets the current policy and returns the new one (or throws a VigilError naming the
   * field). Checked by nft first; stored as version n+1; then installed. A failed install keeps the version and
   * says `installed: false` with the reason.
   */
  private change(ctx: RequestContext, name: string, details: Record<string, unknown>, mutate: (p: Policy) => { policy: Policy; summary: string }): Promise<FwChange> {
    return this.d.vms.operate(
      ctx,
      name,
      { action: "fw.change", permission: "vm.firewall", details },
      async (h) => {
        const vmId = h.vm.id;
        return this.engine.exclusive(async ({ check, apply }) => {
          const cur = await this.d.repo.current(vmId);
          const { policy: raw, summary } = mutate(structuredClone(cur?.policy ?? defaultPolicy()));
          const policy = parsePolicy(raw);
          const notes = await check({ policy: { vmId, policy } });
          const stored = await this.d.repo.append(vmId, (cur?.version ?? 0) + 1, policy, ctx.actor.name);
          const report = await apply();
          return {
            vm: h.vm.name,
            version: stored.version,
            summary,
            installed: report.installed,
            ...(report.reason ? { reason: report.reason } : {}),
            notes: notes.filter((n) => n.vmId === vmId).map((n) => `rule ${n.rule}: ${n.note}`),
          };
        });
      },
      (r) => ({ version: r.version, summary: r.summary, installed: r.installed }),
    );
  }

  addRule(ctx: RequestContext, name: string, input: unknown): Promise<FwChange> {
    const { rule: rawRule, at } = parseOrThrow(addRuleSchema, input, "firewall rule request");
    const rule = parseRule(rawRule);
    return this.change(ctx, name, { rule, ...(at === undefined ? {} : { at }) }, (p) => {
      if (p.rules.length >= MAX_RULES) throw new VigilError("VIGIL_BAD_REQUEST", `Cannot add a rule to VM ${q(name)}: it has ${MAX_RULES} rules (the most allowed)`, { field: "rule" });
      const pos = at === undefined ? p.rules.length : at - 1;
      if (pos > p.rules.length) throw new VigilError("VIGIL_BAD_REQUEST", `Invalid "at": ${at} is past the end (the policy has ${p.rules.length} rules; use 1-${p.rules.length + 1})`, { field: "at" });
      p.rules.splice(pos, 0, rule);
      return { policy: p, summary: `add rule ${pos + 1}: ${describeRule(rule)}` };
    });
  }

  removeRule(ctx: RequestContext, name: string, index: number): Promise<FwChange> {
    return this.change(ctx, name, { remove: index }, (p) => {
      if (!Number.isInteger(index) || index < 1 || index > p.rules.length) {
        throw new VigilError("VIGIL_BAD_REQUEST", `Invalid rule index ${index}: VM ${q(name)} has ${p.rules.length} rule${p.rules.length === 1 ? "" : "s"}${p.rules.length ? ` (use 1-${p.rules.length})` : ""}`, { field: "index" });
      }
      const [gone] = p.rules.splice(index - 1, 1);
      return { policy: p, summary: `remove rule ${index}: ${gone ? describeRule(gone) : ""}` };
    });
  }

  setDefaults(ctx: RequestContext, name: string, input: unknown): Promise<FwChange> {
    const d = parseOrThrow(defaultsSchema, input, "firewall defaults");
    if (d.in === undefined && d.out === undefined) throw new VigilError("VIGIL_BAD_REQUEST", 'Invalid firewall defaults: give "in" and/or "out" (accept or drop)', { field: "in" });
    return this.change(ctx, name, { defaults: d }, (p) => {
      if (d.in) p.defaults.in = d.in;
      if (d.out) p.defaults.out = d.out;
      return { policy: p, summary: `defaults in ${p.defaults.in}, out ${p.defaults.out}` };
    });
  }

  /** Replaces the whole policy (API PUT). */
  setPolicy(ctx: RequestContext, name: string, input: unknown): Promise<FwChange> {
    const policy = parsePolicy(input);
    return this.change(ctx, name, { rules: policy.rules.length, defaults: policy.defaults }, () => ({ policy, summary: `replace policy (${policy.rules.length} rules)` }));
  }

  /** Idempotent: quarantining a VM already in quarantine changes nothing and says so (`changed: false`). */
  async quarantine(ctx: RequestContext, name: string, input: unknown): Promise<{ vm: string; quarantined: true; changed: boolean; since: string; installed: boolean; reason?: string }> {
    const { reason } = parseOrThrow(quarantineSchema, input, "quarantine request");
    return this.d.vms.operate(ctx, name, { action: "vm.quarantine", permission: "vm.quarantine", details: { reason } }, async (h) => {
      const r = await this.#enter(h.vm.id, reason, ctx.actor.name);
      if (!r.report) return { vm: h.vm.name, quarantined: true as const, changed: false, since: r.since, installed: this.engine.lastReport()?.installed ?? false };
      return { vm: h.vm.name, quarantined: true as const, changed: true, since: r.since, installed: r.report.installed, ...(r.report.reason ? { reason: r.report.reason } : {}) };
    }, (r) => ({ changed: r.changed, installed: r.installed }));
  }

  /**
   * Puts a VM into quarantine under the engine's mutex: checked by the kernel first, stored, installed, and its open
   * connections cut. `report` is absent when the VM was in quarantine already (nothing changed).
   */
  #enter(vmId: string, reason: string, actor: string): Promise<{ since: string; report?: ApplyReport }> {
    return this.engine.exclusive(async ({ check, apply }) => {
      const current = await this.d.repo.quarantined();
      const already = current.get(vmId);
      if (already) return { since: already.since };
      await check({ quarantined: new Set([...current.keys(), vmId]) });
      const since = new Date().toISOString();
      await this.d.repo.quarantine({ vmId, since, reason, actor });
      const report = await apply();
      if (report.installed) await this.engine.forgetConnections((await this.nicsOf(vmId)).map((n) => n.ip));
      return { since, report };
    });
  }

  /** Lets a VM out of quarantine under the engine's mutex; undefined when it was not in quarantine. */
  #leave(vmId: string): Promise<ApplyReport | undefined> {
    return this.engine.exclusive(async ({ apply }) => ((await this.d.repo.release(vmId)) ? apply() : undefined));
  }

  /** The VM's quarantine entry, if it is in quarantine. */
  async quarantineOf(vmId: string): Promise<{ since: string; reason: string; actor: string } | undefined> {
    const e = (await this.d.repo.quarantined()).get(vmId);
    return e ? { since: e.since, reason: e.reason, actor: e.actor } : undefined;
  }

  /**
   * The posture gate's quarantine (src/posture/posture-service.ts), by the system actor, for a VM whose lock the
   * caller already holds (start or resume, before the guest runs): no `vms.operate` here. The caller audits.
   * Refused when the rules cannot be installed: a gate that is not enforced must not let the VM run.
   */
  async gateQuarantine(vmId: string, reason: string): Promise<boolean> {
    const { report } = await this.#enter(vmId, reason, SYSTEM_ACTOR.name);
    if (report && !report.installed && (await this.nicsOf(vmId)).length > 0) {
      throw new VigilError("VIGIL_HOST", `Cannot quarantine the VM: its firewall rules could not be installed (${report.reason ?? "unknown reason"})`);
    }
    return report !== undefined;
  }

  /** Lets a VM out of the quarantine the gate put it in (the caller checked that it was the gate's). */
  async gateRelease(vmId: string): Promise<boolean> {
    return (await this.#leave(vmId)) !== undefined;
  }

  /** Idempotent: releasing a VM not in quarantine changes nothing (`changed: false`). */
  async release(ctx: RequestContext, name: string): Promise<{ vm: string; quarantined: false; changed: boolean; installed: boolean; reason?: string }> {
    return this.d.vms.operate(ctx, name, { action: "vm.release", permission: "vm.quarantine" }, async (h) => {
      const report = await this.#leave(h.vm.id);
      if (!report) return { vm: h.vm.name, quarantined: false as const, changed: false, installed: this.engine.lastReport()?.installed ?? false };
      return { vm: h.vm.name, quarantined: false as const, changed: true, installed: report.installed, ...(report.reason ? { reason: report.reason } : {}) };
    }, (r) => ({ changed: r.changed, installed: r.installed }));
  }

  async listServices(ctx: RequestContext): Promise<QuarantineService[]> {
    await this.d.guard.authorize(ctx, { action: "net.service.list", permission: "network.read", target: { kind: "network" }, readOnly: true });
    return this.d.repo.services();
  }

  async addService(ctx: RequestContext, input: unknown): Promise<QuarantineService & { installed: boolean }> {
    const s = parseOrThrow(serviceSchema, input, "quarantine service");
    return this.d.guard.run(ctx, { action: "net.service.add", permission: "network.manage", target: { kind: "service", name: s.name }, details: { ip: s.ip, proto: s.proto, port: s.port } }, () =>
      this.engine.exclusive(async ({ check, apply }) => {
        const all = await this.d.repo.services();
        if (all.some((x) => x.name === s.name)) throw new VigilError("VIGIL_CONFLICT", `Cannot add service ${q(s.name)}: a service with that name exists`, { field: "name" });
        await check({ services: [...all, s] });
        await this.d.repo.addService(s);
        const report = await apply();
        return { ...s, installed: report.installed };
      }),
    );
  }

  async removeService(ctx: RequestContext, name: string): Promise<{ name: string; removed: true; installed: boolean }> {
    return this.d.guard.run(ctx, { action: "net.service.remove", permission: "network.manage", target: { kind: "service", name } }, () =>
      this.engine.exclusive(async ({ apply }) => {
        if (!(await this.d.repo.removeService(name))) throw new VigilError("VIGIL_NOT_FOUND", `Service ${q(name)} does not exist`, { field: "name" });
        const report = await apply();
        return { name, removed: true as const, installed: report.installed };
      }),
    );
  }

  /**
   * A new VM (clone, import) starts with `policy` as its version 1, audited as fw.change (PolicyCarrier, for
   * storage). Called by the capability that created the VM, after its own authorization; installs nothing (the
   * new VM is not attached yet: its first attach compiles it).
   */
  async adopt(ctx: RequestContext, vm: { id: string; name: string }, policy: unknown, from: string): Promise<void> {
    const checked = parsePolicy(policy);
    if ((await this.d.repo.current(vm.id)) !== undefined) return;
    await this.d.repo.append(vm.id, 1, checked, ctx.actor.name);
    await this.d.audit.append({ actor: ctx.actor.name, action: "fw.change", target: { kind: "vm", id: vm.id, name: vm.name }, result: "ok", requestId: ctx.requestId, details: { version: 1, summary: `policy copied from ${from} (${checked.rules.length} rules)` } });
  }

  checkPolicy(policy: unknown): void {
    parsePolicy(policy);
  }

  /** The VM's current policy (the default when it never changed), for a clone and a bundle. */
  async exportPolicy(vmId: string): Promise<Policy> {
    return (await this.d.repo.current(vmId))?.policy ?? defaultPolicy();
  }
}
