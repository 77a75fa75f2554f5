/** The frame: header (who, theme, sign out), navigation, and the page the URL names. */
import { useEffect, useState } from "react";
import { useSession } from "./session.tsx";
import { navigate, useRoute, type Route } from "./lib/router.ts";
import { may } from "./lib/permissions.ts";
import { Login } from "./pages/Login.tsx";
import { Inventory } from "./pages/Inventory.tsx";
import { VmPage } from "./pages/VmPage.tsx";
import { AuditPage } from "./pages/AuditPage.tsx";
import { UsersPage } from "./pages/UsersPage.tsx";
import { HostPage } from "./pages/HostPage.tsx";
import { HostsPage } from "./pages/HostsPage.tsx";
import { NetworksPage } from "./pages/NetworksPage.tsx";
import { PosturePage } from "./pages/PosturePage.tsx";
import { TasksPage } from "./pages/TasksPage.tsx";
import { TokensSection } from "./pages/TokensSection.tsx";

type Theme = "light" | "dark";

function useTheme(): [Theme, (t: Theme) => void] {
  const initial: Theme = (document.documentElement.dataset.theme as Theme | undefined) ?? (matchMedia("(prefers-color-scheme: dark)").matches ? "dark" : "light");
  const [theme, setTheme] = useState<Theme>(initial);
  useEffect(() => {
    document.documentElement.dataset.theme = theme;
  }, [theme]);
  return [theme, setTheme];
}

function NavLink({ to, label, current }: { to: Route; label: string; current: boolean }) {
  const href = to.page === "inventory" ? "/" : `/${to.page}`;
  return (
    <a
      href={href}
      aria-current={current ? "page" : undefined}
      onClick={(e) => {
        e.preventDefault();
        navigate(to);
      }}
    >
      {label}
    </a>
  );
}

export function App() {
  const { session, checking, logout } = useSession();
  const route = useRoute();
  const [theme, setTheme] = useTheme();
  if (checking) return <div className="splash">vigil…</div>;
  if (!session) return <Login />;
  return (
    <div className="frame">
      <header className="top">
        <a
          className="brand"
          href="/"
          onClick={(e) => {
            e.preventDefault();
            navigate({ page: "inventory" });
          }}
        >
          vigil
        </a>
        <nav aria-label="Main">
          <NavLink to={{ page: "inventory" }} label="Inventory" current={route.page === "inventory" || route.page === "vm"} />
          <NavLink to={{ page: "tasks" }} label="Tasks" current={route.page === "tasks"} />
          <NavLink to={{ page: "audit" }} label="Audit log" current={route.page === "audit"} />
          <NavLink to={{ page: "posture" }} label="Stale fleet" current={route.page === "posture"} />
          {may(session, "network.read") && <NavLink to={{ page: "networks" }} label="Networks" current={route.page === "networks"} />}
          {may(session, "user.read") && <NavLink to={{ page: "users" }} label="Users" current={route.page === "users"} />}
          {session.server === "manager" ? (
            <NavLink to={{ page: "hosts" }} label="Hosts" current={route.page === "hosts"} />
          ) : (
            (may(session, "host.read") || may(session, "image.read")) && <NavLink to={{ page: "host" }} label="Host and trust" current={route.page === "host"} />
          )}
          <NavLink to={{ page: "tokens" }} label="My tokens" current={route.page === "tokens"} />
        </nav>
        <div className="who">
          <span data-testid="whoami">
            {session.user.name} <small>({session.user.roles.join(", ") || "no role"})</small>
          </span>
          <button type="button" onClick={() => setTheme(theme === "dark" ? "light" : "dark")} aria-label={`Switch to ${theme === "dark" ? "light" : "dark"} theme`}>
            {theme === "dark" ? "☀" : "☾"}
          </button>
          <button type="button" onClick={() => void logout()}>
            Sign out
          </button>
        </div>
      </header>
      {route.page === "vm" ? <VmPage name={route.name} tab={route.tab} /> : route.page === "audit" ? <AuditPage /> : route.page === "users" ? <UsersPage /> : route.page === "host" ? <HostPage /> : route.page === "hosts" ? <HostsPage /> : route.page === "networks" ? <NetworksPage /> : route.page === "posture" ? <PosturePage /> : route.page === "tasks" ? <TasksPage /> : route.page === "tokens" ? (
        <main className="page">
          <TokensSection user={session.user.name} canManage />
        </main>
      ) : <Inventory {...(route.page === "inventory" && route.host ? { host: route.host } : {})} />}
    </div>
  );
}
