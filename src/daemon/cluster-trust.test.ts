/**
 * The hosts of a cluster trust each other's bundle keys (daemon/cluster-trust.ts): each ready host gets the others'
 * site keys it lacks, as the manager's system actor; a second run adds nothing; a key added meanwhile (409) counts
 * as trusted; any other refusal is the caller's error.
 */
import { strict as assert } from "node:assert";
import { test } from "node:test";
import { VigilError } from "../errors.ts";
import { MANAGER_ACTOR } from "../cluster/host-registry.ts";
import { shareHostKeys } from "./cluster-trust.ts";

function agents(names: string[], opts: { conflictOn?: string; refuseOn?: string } = {}) {
  const trust = new Map(names.map((n) => [n, [{ keyId: `k-${n}`, publicKey: `PEM ${n}`, site: true }]]));
  const posts: string[] = [];
  const call = async <T>(host: string, method: string, _path: string, body: unknown, actor: { name: string }): Promise<T> => {
    assert.equal(actor.name, MANAGER_ACTOR.name);
    if (method === "GET") return { keys: trust.get(host)! } as T;
    const b = body as { name: string; publicKey: string };
    if (host === opts.refuseOn) throw new VigilError("VIGIL_FORBIDDEN", "Permission denied: trust.manage");
    posts.push(`${host} <- ${b.name}`);
    if (host === opts.conflictOn) throw new VigilError("VIGIL_CONFLICT", "already trusted");
    trust.get(host)!.push({ keyId: `k-${b.publicKey.slice(4)}`, publicKey: b.publicKey, site: false });
    return {} as T;
  };
  return { call, posts, trust };
}

test("each host gets the other hosts' site keys it lacks; a second run adds nothing", async () => {
  const a = agents(["h1", "h2", "h3"]);
  const added = await shareHostKeys({ call: a.call, actor: MANAGER_ACTOR }, ["h1", "h2", "h3"]);
  assert.deepEqual(a.posts.sort(), ["h1 <- cluster host h2", "h1 <- cluster host h3", "h2 <- cluster host h1", "h2 <- cluster host h3", "h3 <- cluster host h1", "h3 <- cluster host h2"]);
  assert.equal(added.length, 6);
  assert.deepEqual(await shareHostKeys({ call: a.call, actor: MANAGER_ACTOR }, ["h1", "h2", "h3"]), []);
  assert.equal(a.posts.length, 6);
});

test("a key added meanwhile (409) is trusted all the same; another refusal is an error", async () => {
  const c = agents(["h1", "h2"], { conflictOn: "h2" });
  assert.deepEqual((await shareHostKeys({ call: c.call, actor: MANAGER_ACTOR }, ["h1", "h2"])).map((x) => x.host), ["h1"]);
  const r = agents(["h1", "h2"], { refuseOn: "h1" });
  await assert.rejects(shareHostKeys({ call: r.call, actor: MANAGER_ACTOR }, ["h1", "h2"]), /trust\.manage/);
});
