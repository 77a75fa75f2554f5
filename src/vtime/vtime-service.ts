/**
 * Rollback-safe time as operations: the generation tree, the security floor, the monotonic store's contents
 * and namespace links, and the per-VM vtime channels that serve guests.
 */
import { z } from "zod";
import type { AuditLog } from "../audit/audit-log.ts";
import type { RequestContext } from "../auth/guard.ts";
import { VigilError, q } from "../errors.ts";
import type { Logger } from "../log.ts";
import type { VmRuntime } from "../host/vm-runtime.ts";
import { parseOrThrow } from "../validation.ts";
import type { VmRecord } from "../vm/vm-repository.ts";
import type { VmService } from "../vm/vm-service.ts";
import { VtimeChannel } from "./channel.ts";
import { compareVersions } from "./debian-version.ts";
import type { Generation, GenerationLog } from "./generations.ts";
import { floorKeyPattern, floorValuePattern } from "./rollback-policy.ts";
import type { MonotonicStore } from "./store.ts";

export const setFloorSchema = z.strictObject({
  facts: z.record(z.string().regex(floorKeyPattern, "fact names are 1-64 letters, digits and _.-, starting with a lower-case letter"), z.string().regex(floorValuePattern, "fact values are version-like: 1-128 letters, digits and .+~:_-")),
  force: z.boolean().default(false),
  reason: z.string().max(500).optional(),
});

export class VtimeService {
  private readonly channels = new Map<string, VtimeChannel>();
  /** Serializes `link` (see there): entered before any VM lock, never while holding one. */
  private linkTail: Promise<unknown> = Promise.resolve();

  constructor(
    private readonly vms: VmService,
    private readonly generationsLog: GenerationLog,
    private readonly store: MonotonicStore,
    private readonly audit: AuditLog,
    private readonly log: Logger,
  ) {
    // A VM that leaves (or an incoming one given up) takes its store's rows along: no value is answered from memory
    // afterwards, or a VM that comes back would read a counter from before it left.
    this.unsubscribe = audit.subscribe((r) => {
      if ((r.action === "vm.migrated-out" || r.action === "vm.migration-aborted" || r.action === "vm.incoming") && r.result === "ok") store.forgetCached();
    });
  }

  private readonly unsubscribe: () => void;

  /** Runtime hook: serve the VM's vtime channel for as long as its QEMU lives. */
  readonly attach = (vm: VmRecord, rt: VmRuntime): void => {
    if (!vm.spec.vtime) return;
    void this.channels.get(vm.id)?.close();
    const ch = new VtimeChannel(rt.layout.vtimeSocket, { vmId: vm.id, vmName: vm.name, namespace: async () => (await this.vms.recordById(vm.id)).vtimeNs }, this.store, this.audit, this.log);
    this.channels.set(vm.id, ch);
    ch.open();
    void rt.exited.then(() => {
      void ch.close();
      if (this.channels.get(vm.id) === ch) this.channels.delete(vm.id);
    });
  };

  /** Stops every channel; resolves once their open audit windows are written (call before the audit log closes). */
  async close(): Promise<void> {
    this.unsubscribe();
    const closing = [...this.channels.values()].map((ch) => ch.close());
    this.channels.clear();
    await Promise.all(closing);
  }

  async generations(ctx: RequestContext, name: string): Promise<{ vm: string; current: number; vmgenid: string; generations: Generation[] }> {
    const v = await this.vms.show(ctx, name);
    return { vm: v.name, current: v.generation, vmgenid: v.vmgenid, generations: await this.generationsLog.list(v.id) };
  }

  async show(ctx: RequestContext, name: string) {
    const v = await this.vms.show(ctx, name);
    const rec = await this.vms.recordById(v.id);
    return { vm: v.name, namespace: rec.vtimeNs, floor: rec.securityFloor, ...(await this.store.dump(rec.vtimeNs)), problems: this.channels.get(v.id)?.problems ?? [] };
  }

  /**
   * Raises facts of the VM's security floor. Lowering one is refused unless forced with a reason (it is how a
   * site records that it knowingly rolled something back).
   */
  async setFloor(ctx: RequestContext, name: string, input: unknown): Promise<{ vm: string; floor: Record<string, string> }> {
    return this.vms.operate(ctx, name, { action: "vm.floor", permission: "vm.modify", details: typeof input === "object" && input !== null ? (input as Record<string, unknown>) : {} }, async (h) => {
      const req = parseOrThrow(setFloorSchema, input, "security floor");
      const floor = { ...h.vm.securityFloor };
      for (const [fact, value] of Object.entries(req.facts)) {
        const now = floor[fact];
        if (now !== undefined && compareVersions(value, now) < 0) {
          if (!req.force) throw new VigilError("VIGIL_POLICY_DENIED", `Cannot lower ${q(fact)} of VM ${q(h.vm.name)} from ${now} to ${value}: the floor only rises (use --force with --reason)`, { field: `facts.${fact}` });
          if (!req.reason) throw new VigilError("VIGIL_BAD_REQUEST", "Lowering the security floor needs a reason", { field: "reason" });
        }
        floor[fact] = value;
      }
      const vm = await h.update({ securityFloor: floor });
      return { vm: vm.name, floor: vm.securityFloor };
    });
  }

  /**
   * Lets `name` share the monotonic store of `source` (its owner must control both).
   *
   * Never holds two VM locks at once (libvirt forbids nested domain jobs for the same reason): `link(a→b)` and
   * `link(b→a)` at the same time would otherwise each hold one lock and wait for the other forever. The source
   * is authorized (and audited) under its own lock first, released, then `name` is changed under its lock.
   * Links run one at a time (`linkTail`, always taken before any VM lock and never inside one), and only links
   * change a VM's namespace, so the source's namespace read afterwards is still the one just authorized.
   */
  async link(ctx: RequestContext, name: string, source: string): Promise<{ vm: string; namespace: string; sharedWith: string }> {
    const run = this.linkTail.then(async () => {
      // Controlling the source too is part of the permission: reading its counters is what the link grants.
      const sourceId = name === source ? undefined : await this.vms.operate(ctx, source, { action: "vtime.link-source", permission: "vm.modify", details: { linkedVm: name } }, async (src) => src.vm.id);
      return this.vms.operate(ctx, name, { action: "vtime.link", permission: "vm.modify", details: { source } }, async (h) => {
        if (sourceId === undefined) {
          // Say what is true now: a VM linked before shares another VM's store, not its own.
          const ns = h.vm.vtimeNs;
          if (ns === h.vm.id) throw new VigilError("VIGIL_BAD_REQUEST", `Cannot link VM ${q(name)} to itself: it uses its own store already`, { field: "source" });
          const owner = await this.vms.recordById(ns).then((v) => q(v.name), () => `a VM that no longer exists (namespace ${ns})`);
          throw new VigilError("VIGIL_BAD_REQUEST", `Cannot link VM ${q(name)} to itself: it already shares the store of ${owner}; link it to another VM to share that one's store instead`, { field: "source" });
        }
        const ns = (await this.vms.recordById(sourceId)).vtimeNs;
        const vm = await h.update({ vtimeNs: ns });
        this.channels.get(vm.id)?.relink();
        return { vm: vm.name, namespace: vm.vtimeNs, sharedWith: source };
      });
    });
    this.linkTail = run.catch(() => undefined);
    return run;
  }
}
