/**
 * Who is signed in. Logging in trades a token for the HttpOnly session cookie (POST /v1/session); the CSRF value
 * it returns stays in memory. A reload asks GET /v1/session again, so nothing about the login is kept in
 * localStorage or in a URL.
 */
import { createContext, useCallback, useContext, useEffect, useState, type ReactNode } from "react";
import { api, setCsrf, whenUnauthenticated } from "./lib/api.ts";
import type { SessionInfo } from "./lib/types.ts";

interface SessionCtx {
  session: SessionInfo | null;
  checking: boolean;
  login: (token: string) => Promise<void>;
  logout: () => Promise<void>;
}

const Ctx = createContext<SessionCtx | null>(null);

export function SessionProvider({ children }: { children: ReactNode }) {
  const [session, setSession] = useState<SessionInfo | null>(null);
  const [checking, setChecking] = useState(true);
  const adopt = useCallback((s: SessionInfo | null) => {
    setCsrf(s?.csrf ?? null);
    setSession(s);
  }, []);
  useEffect(() => {
    whenUnauthenticated(() => adopt(null));
    api<SessionInfo>("GET", "/v1/session")
      .then(adopt, () => adopt(null))
      .finally(() => setChecking(false));
  }, [adopt]);
  const login = useCallback(async (token: string) => adopt(await api<SessionInfo>("POST", "/v1/session", { body: { token } })), [adopt]);
  const logout = useCallback(async () => {
    await api("DELETE", "/v1/session").catch(() => undefined);
    adopt(null);
  }, [adopt]);
  return <Ctx.Provider value={{ session, checking, login, logout }}>{children}</Ctx.Provider>;
}

export function useSession(): SessionCtx {
  const c = useContext(Ctx);
  if (!c) throw new Error("useSession outside SessionProvider");
  return c;
}
