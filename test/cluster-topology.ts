/**
 * The test topology of docs/cluster.md: every "host" is a network namespace of its own (its agent, its QEMUs' jails
 * are created from it), joined by a veth to an "underlay" bridge in another namespace; the manager has one too.
 * Everything is created by the test and deleted in `after`, even on failure: no traffic ever touches the machine's
 * own interfaces.
 */
import { strict as assert } from "node:assert";
import { spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { TestContext } from "node:test";
import { freshDatabase } from "../src/inventory/testing/pg.ts";
import { BIN, requireTinyImage, startDaemon, waitFor, type DaemonHandle } from "./harness.ts";

export interface TopologyHost {
  /** The namespace's name (under /run/netns). */
  netns: string;
  /** Its address on the underlay. */
  addr: string;
  /** The wrap that runs a command inside it (for test/harness.ts startDaemon). */
  wrap: readonly string[];
}

export interface Topology {
  underlay: string;
  hosts: TopologyHost[];
  manager: TopologyHost;
}

function ip(...args: string[]): void {
  const r = spawnSync("ip", args, { encoding: "utf8", timeout: 10_000 });
  if (r.status !== 0) throw new Error(`ip ${args.join(" ")}: ${r.stderr.trim()}`);
}

/** `hosts` host namespaces and one for the manager on 10.251.0.0/24 (hosts .1…, manager .100). */
export function clusterTopology(t: TestContext, hosts: number): Topology {
  const id = randomBytes(3).toString("hex");
  const underlay = `vt-ul-${id}`;
  const made: string[] = [];
  t.after(() => {
    // Deleting a namespace deletes its veth end, and with it the peer in the underlay.
    for (const ns of made.reverse()) spawnSync("ip", ["netns", "delete", ns]);
  });
  ip("netns", "add", underlay);
  made.push(underlay);
  ip("-n", underlay, "link", "add", "br0", "type", "bridge");
  ip("-n", underlay, "link", "set", "br0", "up");
  const join = (name: string, index: number, addr: string): TopologyHost => {
    const netns = `vt-${name}-${id}`;
    ip("netns", "add", netns);
    made.push(netns);
    ip("-n", underlay, "link", "add", `p${index}`, "type", "veth", "peer", "name", "eth0", "netns", netns);
    ip("-n", underlay, "link", "set", `p${index}`, "master", "br0", "up");
    ip("-n", netns, "link", "set", "lo", "up");
    ip("-n", netns, "addr", "add", `${addr}/24`, "dev", "eth0");
    ip("-n", netns, "link", "set", "eth0", "up");
    return { netns, addr, wrap: ["nsenter", `--net=/run/netns/${netns}`, "--"] };
  };
  const list = Array.from({ length: hosts }, (_, i) => join(`h${i + 1}`, i + 1, `10.251.0.${i + 1}`));
  return { underlay, hosts: list, manager: join("m", 100, "10.251.0.100") };
}

/**
 * Two agents (h1, h2) and a manager on PostgreSQL, each in its own namespace of a fresh topology, hosts added with
 * `vigil host add` and both ready. Shared by every cluster integration test.
 */
export async function cluster(t: TestContext, opts: { agentEnv?: (host: string) => NodeJS.ProcessEnv; managerArgs?: readonly string[]; agentArgs?: readonly string[] } = {}) {
  requireTinyImage();
  const topo = clusterTopology(t, 2);
  const db = await freshDatabase();
  const home = mkdtempSync(join(tmpdir(), "vigil-mgr-"));
  const ca = spawnSync(process.execPath, [BIN, "ca", "init"], { env: { ...process.env, VIGIL_HOME: home }, encoding: "utf8" });
  assert.equal(ca.status, 0, ca.stderr);
  const manager = await startDaemon(t, { home, command: ["serve", "--cluster", "--db", db.url, ...(opts.managerArgs ?? [])], wrap: topo.manager.wrap });
  const agents: DaemonHandle[] = [];
  /** Each agent's credentials directory (from `vigil host add --out`). */
  const credentials: string[] = [];
  for (const [i, h] of topo.hosts.entries()) {
    const creds = join(mkdtempSync(join(tmpdir(), "vigil-creds-")), "agent");
    const add = manager.cli("host", "add", `h${i + 1}`, "--addr", `${h.addr}:7451`, "--out", creds);
    assert.equal(add.status, 0, add.stderr);
    credentials.push(creds);
    agents.push(await startDaemon(t, { command: ["agent", "--listen", `${h.addr}:7451`, "--credentials", creds, ...(opts.agentArgs ?? [])], wrap: h.wrap, ...(opts.agentEnv ? { env: opts.agentEnv(`h${i + 1}`) } : {}) }));
  }
  await waitFor(() => {
    const r = manager.cli("host", "list", "--json");
    return r.status === 0 && (JSON.parse(r.stdout) as { state: string }[]).every((h) => h.state === "ready");
  }, 30_000, "both hosts ready");
  return { manager, agents, topo, credentials };
}
