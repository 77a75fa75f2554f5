/**
 * Who is asking, for every way a request arrives: the unix socket is the daemon's own OS user (its 0700
 * directory is the authentication); anything else needs `Authorization: Bearer <token>`. The API middleware and
 * the console upgrade both come through here, so the two can never disagree.
 */
import type { Actor } from "./permissions.ts";
import type { UserStore } from "./users.ts";

export async function authenticateRequest(users: UserStore, localUser: string, transport: "unix" | "tcp" | undefined, authorization: string | undefined): Promise<Actor | undefined> {
  if (transport === "unix") {
    const row = await users.findByName(localUser);
    return row ? users.actorFor(row, "unix") : undefined;
  }
  const m = /^Bearer (\S+)$/.exec(authorization ?? "");
  return m ? users.authenticate(m[1]!) : undefined;
}
