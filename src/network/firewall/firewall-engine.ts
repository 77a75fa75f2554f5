/**
 * The one place the host's firewall is (re)installed: reads the state (policies, quarantine, services) and what
 * the switch has attached, compiles the whole ruleset and loads it as one nft transaction, serialized by a mutex
 * so two changes never interleave their read-compile-load. A change is first compiled with its candidate state
 * and checked by the kernel (`nft -c`), so a policy nft would reject is refused before it is stored.
 */
import { VigilError } from "../../errors.ts";
import type { Logger } from "../../log.ts";
import { Mutex } from "../../util/mutex.ts";
import { inNetns } from "../netns-exec.ts";
import type { AttachedNic, SwitchListener, SwitchView } from "../types.ts";
import { uplinkNames } from "../nat.ts";
import { compileRuleset, type CompileInput, type CompileNote, type QuarantineService } from "./compile.ts";
import { checkRuleset, loadRuleset, netnsExists } from "./nft.ts";
import type { Policy } from "./policy.ts";

export interface FirewallState {
  policies(): Promise<Map<string, Policy>>;
  quarantined(): Promise<Set<string>>;
  services(): Promise<QuarantineService[]>;
}

/** A candidate change: replaces parts of the stored state for the check. */
export interface Overrides {
  policy?: { vmId: string; policy: Policy };
  quarantined?: Set<string>;
  services?: QuarantineService[];
}

export interface ApplyReport {
  installed: boolean;
  /** Why not installed (no switch, apply failed). */
  reason?: string;
  nics: number;
  notes: CompileNote[];
  at: string;
}

export class FirewallEngine {
  private view: SwitchView | undefined;
  private readonly mutex = new Mutex();
  private last: ApplyReport | undefined;

  constructor(
    private readonly state: FirewallState,
    private readonly log: Logger,
  ) {}

  /** The switch this host runs (daemon wiring); until then nothing is installed and reports say so. */
  connect(view: SwitchView): void {
    this.view = view;
  }

  get switchView(): SwitchView | undefined {
    return this.view;
  }

  /** Register with the switch: runs after every attach/detach. A failure propagates (the attach fails closed). */
  readonly listener: SwitchListener = async () => {
    const r = await this.apply();
    if (!r.installed && this.view) throw new VigilError("VIGIL_HOST", `Cannot install the firewall: ${r.reason ?? "unknown reason"}`);
  };

  lastReport(): ApplyReport | undefined {
    return this.last;
  }

  async attached(): Promise<AttachedNic[]> {
    return this.view ? this.view.attached() : [];
  }

  /** Runs `fn` holding the firewall lock (a change: check, store, apply without another change in between). */
  exclusive<T>(fn: (locked: { check: (o: Overrides) => Promise<CompileNote[]>; apply: () => Promise<ApplyReport> }) => Promise<T>): Promise<T> {
    return this.mutex.run(() => fn({ check: (o) => this.checkLocked(o), apply: () => this.applyLocked() }));
  }

  apply(): Promise<ApplyReport> {
    return this.mutex.run(() => this.applyLocked());
  }

  private async input(o: Overrides = {}): Promise<CompileInput> {
    const view = this.view;
    const [nics, networks, policies, quarantined, services] = await Promise.all([
      view ? view.attached() : Promise.resolve([]),
      view ? view.networks() : Promise.resolve([]),
      this.state.policies(),
      o.quarantined ? Promise.resolve(o.quarantined) : this.state.quarantined(),
      o.services ? Promise.resolve(o.services) : this.state.services(),
    ]);
    if (o.policy) policies.set(o.policy.vmId, o.policy.policy);
    // The NAT uplink's name follows from the netns (nat.ts); only NAT networks' bridges ever reach it.
    const uplink = view && networks.some((n) => n.nat === true) ? uplinkNames(view.netns().name).vigil : undefined;
    return { nics, networks, policies, quarantined, services, uplink };
  }

  /** Compiles the candidate state and has the kernel check it (nothing committed); throws a VigilError if rejected. */
  private async checkLocked(o: Overrides): Promise<CompileNote[]> {
    const compiled = compileRuleset(await this.input(o));
    const view = this.view;
    if (view && netnsExists(view.netns())) {
      try {
        await checkRuleset(view.netns(), compiled.text);
      } catch (err) {
        throw new VigilError("VIGIL_BAD_REQUEST", `Cannot change the firewall: nft rejects the resulting ruleset (${err instanceof Error ? err.message : String(err)})`, { cause: err });
      }
    }
    return compiled.notes;
  }

  private async applyLocked(): Promise<ApplyReport> {
    const at = new Date().toISOString();
    const view = this.view;
    let report: ApplyReport;
    if (!view) report = { installed: false, reason: "no virtual switch on this host", nics: 0, notes: [], at };
    else {
      const input = await this.input();
      const compiled = compileRuleset(input);
      const ns = view.netns();
      if (!netnsExists(ns)) {
        // The switch deletes its netns with the last network: nothing attached, nothing to install.
        report = input.nics.length === 0 ? { installed: true, nics: 0, notes: [], at } : { installed: false, reason: `network namespace ${ns.name} does not exist`, nics: input.nics.length, notes: compiled.notes, at };
      } else {
        try {
          await loadRuleset(ns, compiled.text);
          report = { installed: true, nics: input.nics.length, notes: compiled.notes, at };
        } catch (err) {
          const reason = err instanceof Error ? err.message : String(err);
          this.log.error({ err: reason }, "cannot install the firewall ruleset; the previous one stays in place");
          report = { installed: false, reason, nics: input.nics.length, notes: compiled.notes, at };
        }
      }
    }
    this.last = report;
    return report;
  }

  /**
   * Forgets the connections of these addresses (conntrack inside the netns): a VM moved into quarantine keeps no
   * connection it opened before, since "established" traffic is accepted ahead of the quarantine chain.
   */
  async forgetConnections(ips: readonly string[]): Promise<void> {
    const view = this.view;
    if (!view || !netnsExists(view.netns())) return;
    for (const ip of ips) {
      for (const dir of ["-s", "-d"]) {
        // conntrack exits 1 when nothing matched: not an error here.
        await inNetns(view.netns(), "conntrack", ["-D", dir, ip], { what: "Flushing connections (conntrack -D)" }).catch(() => undefined);
      }
    }
  }
}
