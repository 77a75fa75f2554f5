/**
 * What follows a VM into its copies besides its disks: its firewall policy (docs/network.md, "Policy follows the
 * VM"). Storage sees only this shape; the firewall implements it (network/firewall/firewall-service.ts), so a
 * clone or an import never reaches into the firewall's internals.
 */
import type { RequestContext } from "../auth/guard.ts";

export interface PolicyCarrier {
  /** The VM's current policy as JSON, for a bundle's manifest. */
  exportPolicy(vmId: string): Promise<unknown>;
  /** Throws a VigilError naming the field if `policy` (from a bundle) is no valid policy. */
  checkPolicy(policy: unknown): void;
  /** Gives a new VM (clone or import) `policy` as its version 1, audited. */
  adopt(ctx: RequestContext, vm: { id: string; name: string }, policy: unknown, from: string): Promise<void>;
}
