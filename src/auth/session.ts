/**
 * A browser's session (docs/web.md "Sessions, CSRF and the console socket"): the bearer token itself, kept
 * by the browser in an HttpOnly, SameSite=Strict cookie so page scripts never hold it and other sites never send
 * it. A cookie is an ambient credential, so every request it authenticates that is not a read (GET/HEAD) must also
 * carry `x-vigil-csrf`, a value derived from the token that only a page which logged in (and so was told it) knows.
 * The derivation is stable (a restart of the daemon keeps sessions working) and one-way (the value reveals nothing
 * of the token, and cannot be made without it).
 */
import { createHash, timingSafeEqual } from "node:crypto";
import { PERMISSIONS, can, type Actor } from "./permissions.ts";

export const SESSION_COOKIE = "vigil_session";
export const CSRF_HEADER = "x-vigil-csrf";

/** At most this many bytes of Cookie header are looked at (a browser sends far less for one origin). */
const MAX_COOKIE_HEADER = 8192;

/** csrf(token) = base64url(sha256("vigil-csrf\0" + token)). */
export function csrfFor(token: string): string {
  return createHash("sha256").update(`vigil-csrf\0${token}`, "utf8").digest("base64url");
}

/** Whether `given` is csrf(token), compared in constant time. */
export function csrfMatches(token: string, given: string | undefined): boolean {
  if (given === undefined) return false;
  const want = Buffer.from(csrfFor(token));
  const got = Buffer.from(given);
  return got.length === want.length && timingSafeEqual(got, want);
}

/** The value of cookie `name` in a Cookie header, or undefined. Malformed pairs are skipped, never thrown on. */
export function cookieValue(header: string | undefined, name: string): string | undefined {
  if (!header || header.length > MAX_COOKIE_HEADER) return undefined;
  for (const part of header.split(";")) {
    const eq = part.indexOf("=");
    if (eq < 0) continue;
    if (part.slice(0, eq).trim() !== name) continue;
    let v = part.slice(eq + 1).trim();
    if (v.length >= 2 && v.startsWith('"') && v.endsWith('"')) v = v.slice(1, -1);
    return /^[\x21-\x7e]{1,512}$/.test(v) && !/[",;\\]/.test(v) ? v : undefined;
  }
  return undefined;
}

/** The Set-Cookie value that starts a session (`Secure` when the listener is TLS). */
export function sessionCookie(token: string, secure: boolean): string {
  return `${SESSION_COOKIE}=${token}; HttpOnly; SameSite=Strict; Path=/${secure ? "; Secure" : ""}`;
}

/** The Set-Cookie value that ends it. */
export function clearedSessionCookie(secure: boolean): string {
  return `${SESSION_COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0${secure ? "; Secure" : ""}`;
}

/** Which token a request presents and how: an Authorization header wins; the cookie only without one. */
export interface PresentedToken {
  token: string;
  via: "bearer" | "cookie";
}

/**
 * The token of a request on the TCP listener: `Authorization: Bearer …`, or (only when there is no Authorization
 * header at all) the session cookie. Undefined when neither is there or the header is not a bearer token.
 */
export function presentedToken(authorization: string | undefined, cookieHeader: string | undefined): PresentedToken | undefined {
  if (authorization !== undefined) {
    const m = /^Bearer (\S+)$/.exec(authorization);
    return m ? { token: m[1]!, via: "bearer" } : undefined;
  }
  const c = cookieValue(cookieHeader, SESSION_COOKIE);
  return c ? { token: c, via: "cookie" } : undefined;
}

/** Methods a cookie alone may authenticate: they change nothing (the API keeps every change off GET and HEAD). */
export function isSafeMethod(method: string): boolean {
  return method === "GET" || method === "HEAD";
}

/**
 * What POST/GET /v1/session answer (the daemon's and the cluster manager's alike): which kind of server this is
 * (the page shows hosts and migrations on a manager), the user, the CSRF value of its token, and the permissions it
 * holds everywhere and on VMs it owns (the page hides what it may not do).
 */
export function sessionBody(actor: Actor, token: string, server: "host" | "manager") {
  return {
    server,
    user: { name: actor.name, roles: actor.roles, groups: actor.groups },
    csrf: csrfFor(token),
    can: PERMISSIONS.filter((p) => can(actor, p)),
    ownedCan: PERMISSIONS.filter((p) => can(actor, p, `user:${actor.name}`)),
  };
}
