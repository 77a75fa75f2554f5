/**
 * The cluster's networks (docs/cluster.md "Networks across hosts (VXLAN)"), on the manager: `POST /v1/networks`
 * makes one network on every ready host — one VNI the manager allocates, each host a disjoint slice of the range
 * for new addresses, the other hosts' underlay addresses as VXLAN peers — all or nothing (a host that fails
 * undoes the hosts already made); `GET /v1/networks` lists them, `DELETE /v1/networks/NAME` removes one from
 * every host it was made on. A host added later is not joined (it has no such network: a VM on it cannot use it
 * and one cannot migrate there). The record is the `cluster_networks` table (migration 0007-network-span).
 */
import type { Context, Hono } from "hono";
import { z } from "zod";
import type { Guard, RequestContext } from "../auth/guard.ts";
import { VigilError, messageOf, q } from "../errors.ts";
import type { Db } from "../inventory/db.ts";
import type { Logger } from "../log.ts";
import { bridgeName, checkNetworkName } from "../network/bridge.ts";
import { formatIpv4, gateway, parseCidr, splitPool } from "../network/ipam.ts";
import { parseOrThrow } from "../validation.ts";
import type { DelegatedActor } from "../cluster/types.ts";

/** A cluster network, in the shape of one host's network (so `vigil net` prints it) plus its VNI and hosts. */
export interface ClusterNetwork {
  name: string;
  cidr: string;
  gateway: string;
  bridge: string;
  dhcp: boolean;
  /** Always false: a network across hosts has no NAT (each host would be a way out of one segment). */
  nat: false;
  vni: number;
  /** The hosts it was made on, each with its pool. */
  hosts: { host: string; address: string; pool: { first: string; last: string } }[];
  createdBy: string;
  createdAt: string;
}

export interface ClusterNetworkDeps {
  db: Db;
  guard: Guard;
  log: Logger;
  readyHosts(): string[];
  /** A host's underlay IPv4 address (its cluster listener's). */
  addressOf(host: string): Promise<string | undefined>;
  call<T>(host: string, method: string, path: string, body: unknown, actor: DelegatedActor): Promise<T>;
  toDelegated(ctx: RequestContext): DelegatedActor;
}

const createSchema = z.strictObject({ name: z.string(), cidr: z.string(), dhcp: z.boolean().default(true), nat: z.literal(false).optional() });

/** The lowest VNI not in use: deterministic, and the UNIQUE constraint settles two managers racing. */
export function nextVni(used: Iterable<number>): number {
  const taken = new Set(used);
  for (let v = 1; v <= 16_777_215; v++) if (!taken.has(v)) return v;
  throw new VigilError("VIGIL_CONFLICT", "Every VXLAN network identifier is in use");
}

export class ClusterNetworks {
  constructor(private readonly d: ClusterNetworkDeps) {}

  /** `GET /v1/networks` on the manager: for holders of network.read. */
  async listFor(ctx: RequestContext): Promise<ClusterNetwork[]> {
    await this.d.guard.authorize(ctx, { action: "net.list", permission: "network.read", target: { kind: "network" }, readOnly: true });
    return this.list();
  }

  async list(): Promise<ClusterNetwork[]> {
    const rows = await this.d.db.selectFrom("cluster_networks").selectAll().orderBy("name").execute();
    return rows.map((r) => ({ name: r.name, cidr: r.cidr, gateway: formatIpv4(gateway(parseCidr(r.cidr))), bridge: bridgeName(r.name), dhcp: r.dhcp === 1, nat: false as const, vni: r.vni, hosts: JSON.parse(r.hosts) as ClusterNetwork["hosts"], createdBy: r.created_by, createdAt: r.created_at }));
  }

  create(ctx: RequestContext, input: unknown): Promise<ClusterNetwork> {
    const name = typeof (input as { name?: unknown } | null)?.name === "string" ? (input as { name: string }).name : undefined;
    return this.d.guard.run(ctx, { action: "net.create", permission: "network.manage", target: { kind: "network", name }, details: { input } }, async () => {
      const req = parseOrThrow(createSchema, input, "network");
      checkNetworkName(req.name);
      const cidr = parseCidr(req.cidr);
      const all = await this.list();
      if (all.some((n) => n.name === req.name)) throw new VigilError("VIGIL_CONFLICT", `Cannot create network ${q(req.name)}: the cluster has a network with that name`, { field: "name" });
      const hosts = [...this.d.readyHosts()].sort();
      if (hosts.length === 0) throw new VigilError("VIGIL_CONFLICT", `Cannot create network ${q(req.name)}: no host is ready`);
      const pools = splitPool(cidr, hosts.length);
      const members = await Promise.all(hosts.map(async (host, i) => {
        const address = await this.d.addressOf(host);
        if (!address) throw new VigilError("VIGIL_CONFLICT", `Cannot create network ${q(req.name)}: host ${q(host)} has no address`);
        return { host, address, pool: pools[i]! };
      }));
      const vni = nextVni(all.map((n) => n.vni));
      const record: ClusterNetwork = { name: req.name, cidr: cidr.text, gateway: formatIpv4(gateway(cidr)), bridge: bridgeName(req.name), dhcp: req.dhcp, nat: false, vni, hosts: members, createdBy: ctx.actor.name, createdAt: new Date().toISOString() };
      // The row first (it holds the name and the VNI); then each host; any failure undoes all of it.
      await this.d.db
        .insertInto("cluster_networks")
        .values({ name: record.name, cidr: record.cidr, dhcp: record.dhcp ? 1 : 0, vni, hosts: JSON.stringify(members), created_by: record.createdBy, created_at: record.createdAt })
        .execute()
        .catch((err: unknown) => {
          // Another manager took the name or the VNI between our read and this insert (the UNIQUE constraints).
          throw new VigilError("VIGIL_CONFLICT", `Cannot create network ${q(req.name)}: its name or VNI ${vni} was just taken (try again)`, { field: "name", cause: err });
        });
      const made: string[] = [];
      const actor = this.d.toDelegated(ctx);
      try {
        for (const m of members) {
          const peers = members.filter((o) => o.host !== m.host).map((o) => o.address);
          // A network of one host has no peer: it is an ordinary network there, with its pool.
          const span = peers.length > 0 ? { vni, peers, pool: m.pool } : undefined;
          await this.d.call(m.host, "POST", "/v1/networks", { name: record.name, cidr: record.cidr, dhcp: record.dhcp, ...(span ? { span } : {}) }, actor);
          made.push(m.host);
        }
      } catch (err) {
        for (const host of made.reverse()) {
          await this.d.call(host, "DELETE", `/v1/networks/${record.name}`, undefined, actor).catch((e: unknown) => this.d.log.warn({ host, network: record.name, err: messageOf(e) }, "network not removed after a failed cluster create"));
        }
        await this.d.db.deleteFrom("cluster_networks").where("name", "=", record.name).execute();
        throw err;
      }
      return record;
    });
  }

  /** `GET /v1/networks/NAME` on the manager: the record, and each host's plugged-in NICs (with their host). */
  async show(ctx: RequestContext, name: string): Promise<ClusterNetwork & { attached: unknown[]; dhcpRunning: boolean; uplink: null }> {
    await this.d.guard.authorize(ctx, { action: "net.show", permission: "network.read", target: { kind: "network", name }, readOnly: true });
    const net = (await this.list()).find((n) => n.name === name);
    if (!net) throw new VigilError("VIGIL_NOT_FOUND", `Network ${q(name)} does not exist in this cluster`);
    const actor = this.d.toDelegated(ctx);
    const perHost = await Promise.all(net.hosts.map((h) => this.d.call<{ attached: object[]; dhcpRunning: boolean }>(h.host, "GET", `/v1/networks/${name}`, undefined, actor).then((d) => ({ host: h.host, ...d }))));
    return { ...net, attached: perHost.flatMap((d) => d.attached.map((a) => ({ ...a, host: d.host }))), dhcpRunning: perHost.every((d) => d.dhcpRunning || !net.dhcp), uplink: null };
  }

  delete(ctx: RequestContext, name: string): Promise<{ deleted: string; hosts: string[] }> {
    return this.d.guard.run(ctx, { action: "net.delete", permission: "network.manage", target: { kind: "network", name } }, async () => {
      const net = (await this.list()).find((n) => n.name === name);
      if (!net) throw new VigilError("VIGIL_NOT_FOUND", `Network ${q(name)} does not exist in this cluster`);
      const actor = this.d.toDelegated(ctx);
      const removed: string[] = [];
      for (const m of net.hosts) {
        try {
          await this.d.call(m.host, "DELETE", `/v1/networks/${name}`, undefined, actor);
        } catch (err) {
          // Already gone there is fine; anything else (a VM uses it, the host is down) stops here, the rest kept.
          if (!(err instanceof VigilError && err.code === "VIGIL_NOT_FOUND")) {
            await this.d.db.updateTable("cluster_networks").set({ hosts: JSON.stringify(net.hosts.filter((h) => !removed.includes(h.host))) }).where("name", "=", name).execute();
            throw err;
          }
        }
        removed.push(m.host);
      }
      await this.d.db.deleteFrom("cluster_networks").where("name", "=", name).execute();
      return { deleted: name, hosts: removed };
    });
  }
}

/** The manager's network routes, in one block (src/daemon/manager.ts calls it). */
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export function registerClusterNetworkRoutes<E extends { Variables: { ctx: RequestContext }; Bindings: any }>(app: Hono<E>, nets: ClusterNetworks): void {
  const ctx = (c: Context<E>) => c.get("ctx");
  app.get("/v1/networks", async (c) => c.json({ networks: await nets.listFor(ctx(c)) }));
  app.get("/v1/networks/:name", async (c) => c.json(await nets.show(ctx(c), c.req.param("name"))));
  app.post("/v1/networks", async (c) => c.json(await nets.create(ctx(c), await c.req.json().catch(() => undefined)), 201));
  app.delete("/v1/networks/:name", async (c) => c.json(await nets.delete(ctx(c), c.req.param("name"))));
}
