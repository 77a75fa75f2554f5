/**
 * One site of several hosts (docs/cluster.md "Bundles across hosts"): every host signs the bundles it exports with
 * its own site key, and a host imports only bundles whose signer it trusts. So that a bundle one host exported is
 * importable on any host of the cluster (`vigil vm import FILE --host h2` through the manager, or on h2 itself),
 * the manager makes every ready host trust every other ready host's key — the same `POST /v1/trust` an admin
 * would make, as the manager's system actor, so each agent audits the `trust.add`. It is no new trust: the manager
 * can already move any VM to any host. Keys of hosts removed from the cluster are not taken away (an admin's
 * `vigil trust remove` on each host does that), as bundles they signed before stay genuine.
 */
import type { DelegatedActor } from "../cluster/types.ts";
import { VigilError } from "../errors.ts";

interface TrustEntry {
  keyId: string;
  publicKey: string;
  site: boolean;
}

export interface ClusterTrustDeps {
  call<T>(host: string, method: string, path: string, body: unknown, actor: DelegatedActor): Promise<T>;
  actor: DelegatedActor;
}

/** Makes each of `hosts` trust the others' site keys; returns what it added (`host` now trusts `signer`'s key). */
export async function shareHostKeys(d: ClusterTrustDeps, hosts: readonly string[]): Promise<{ host: string; signer: string; keyId: string }[]> {
  const lists = await Promise.all(hosts.map(async (host) => ({ host, keys: (await d.call<{ keys: TrustEntry[] }>(host, "GET", "/v1/trust", undefined, d.actor)).keys })));
  const added: { host: string; signer: string; keyId: string }[] = [];
  for (const { host, keys } of lists) {
    const trusted = new Set(keys.map((k) => k.keyId));
    for (const other of lists) {
      const site = other.keys.find((k) => k.site);
      if (other.host === host || !site || trusted.has(site.keyId)) continue;
      try {
        await d.call(host, "POST", "/v1/trust", { name: `cluster host ${other.host}`.slice(0, 64), publicKey: site.publicKey }, d.actor);
        added.push({ host, signer: other.host, keyId: site.keyId });
      } catch (err) {
        // Added meanwhile by another request (or an admin): trusted either way.
        if (!(err instanceof VigilError && err.code === "VIGIL_CONFLICT")) throw err;
      }
      trusted.add(site.keyId);
    }
  }
  return added;
}
