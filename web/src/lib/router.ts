/**
 * Routing by the URL path (no hash), so a page can be bookmarked and reloaded: the daemon answers index.html for
 * every path that is not the API's. A route never carries a secret.
 */
import { useEffect, useState } from "react";

export type Route =
  | { page: "inventory"; host?: string }
  | { page: "vm"; name: string; tab: string }
  | { page: "audit" }
  | { page: "users" }
  | { page: "tokens" }
  | { page: "host" }
  | { page: "hosts" }
  | { page: "networks" }
  | { page: "posture" }
  | { page: "tasks" };

export function parseRoute(pathname: string, search: string): Route {
  const q = new URLSearchParams(search);
  const vm = /^\/vms\/([a-z][a-z0-9-]{0,62})\/?$/.exec(pathname);
  if (vm) return { page: "vm", name: vm[1]!, tab: q.get("tab") ?? "summary" };
  if (pathname === "/audit") return { page: "audit" };
  if (pathname === "/users") return { page: "users" };
  if (pathname === "/tokens") return { page: "tokens" };
  if (pathname === "/host") return { page: "host" };
  if (pathname === "/hosts") return { page: "hosts" };
  if (pathname === "/networks") return { page: "networks" };
  if (pathname === "/posture") return { page: "posture" };
  if (pathname === "/tasks") return { page: "tasks" };
  const host = q.get("host");
  return host ? { page: "inventory", host } : { page: "inventory" };
}

export function routeHref(r: Route): string {
  switch (r.page) {
    case "vm":
      return `/vms/${r.name}${r.tab !== "summary" ? `?tab=${encodeURIComponent(r.tab)}` : ""}`;
    case "inventory":
      return r.host ? `/?host=${encodeURIComponent(r.host)}` : "/";
    default:
      return `/${r.page}`;
  }
}

const listeners = new Set<() => void>();

export function navigate(r: Route | string): void {
  const href = typeof r === "string" ? r : routeHref(r);
  history.pushState(null, "", href);
  for (const l of listeners) l();
}

export function useRoute(): Route {
  const [route, setRoute] = useState(() => parseRoute(location.pathname, location.search));
  useEffect(() => {
    const update = () => setRoute(parseRoute(location.pathname, location.search));
    listeners.add(update);
    window.addEventListener("popstate", update);
    return () => {
      listeners.delete(update);
      window.removeEventListener("popstate", update);
    };
  }, []);
  return route;
}
