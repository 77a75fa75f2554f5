/**
 * Who is asking, for every way a request arrives: the unix socket is the daemon's own OS user (its 0700
 * directory is the authentication); the cluster listener of an agent is the manager, proven by its client
 * certificate (checked by the listener before a request gets here), acting for the user it names in
 * `x-vigil-actor`; anything else needs `Authorization: Bearer <token>`. The API middleware and the console
 * upgrade both come through here, so the two can never disagree.
 */
import { z } from "zod";
import { ROLES, type Actor } from "./permissions.ts";
import type { UserStore } from "./users.ts";
import { presentedToken } from "./session.ts";

export type Transport = "unix" | "tcp" | "cluster";

/** The user the manager authenticated, as it sends it to an agent (src/cluster/types.ts DelegatedActor). */
const DelegatedActorSchema = z.strictObject({
  name: z.string().regex(/^[a-z][a-z0-9._-]{0,62}$/),
  roles: z.array(z.enum(ROLES)).max(ROLES.length),
  groups: z.array(z.string().regex(/^[a-z][a-z0-9._-]{0,62}$/)).max(64),
  introspect: z.boolean(),
});

/** The delegated actor in `header`, or undefined when it is missing or malformed (the request is then refused). */
export function delegatedActor(header: string | undefined): Actor | undefined {
  if (!header || header.length > 4096) return undefined;
  let parsed: unknown;
  try {
    parsed = JSON.parse(header);
  } catch {
    return undefined;
  }
  const r = DelegatedActorSchema.safeParse(parsed);
  if (!r.success) return undefined;
  // A distinct id space: a delegated actor never matches a local user's id (tokens are minted per user id).
  return { userId: `cluster:${r.data.name}`, name: r.data.name, roles: r.data.roles, groups: r.data.groups, introspect: r.data.introspect, via: "cluster" };
}

/**
 * The actor of a request, or undefined (refused). On the TCP listener a browser's session cookie (`cookieHeader`,
 * auth/session.ts) stands for the bearer token when there is no Authorization header; the unix socket and the
 * cluster listener never look at cookies. Whether the cookie was used is `presentedToken`'s answer (the CSRF rule).
 */
export async function authenticateRequest(users: UserStore, localUser: string, transport: Transport | undefined, authorization: string | undefined, delegated?: string, cookieHeader?: string): Promise<Actor | undefined> {
  if (transport === "unix") {
    const row = await users.findByName(localUser);
    return row ? users.actorFor(row, "unix") : undefined;
  }
  if (transport === "cluster") return delegatedActor(delegated);
  const presented = transport === "tcp" ? presentedToken(authorization, cookieHeader) : presentedToken(authorization, undefined);
  return presented ? users.authenticate(presented.token) : undefined;
}
