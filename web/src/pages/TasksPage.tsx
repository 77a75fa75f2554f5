/**
 * Tasks (`vigil task list`; util/task-log.ts): the changes the user asked for — everyone's with audit.read —
 * running ones first with their progress bar (a full clone's copy, an export's bytes, a start's wait), then the last
 * finished ones with how they ended and how long they took. Refreshed every 1.5 s while the page is open; on the
 * cluster manager every host's, with the host.
 */
import { useEffect, useState } from "react";
import { api, errorText } from "../lib/api.ts";
import { useSession } from "../session.tsx";
import { when } from "../lib/format.ts";
import { ErrorLine } from "../components/ErrorLine.tsx";
import { TableHead } from "../components/AuditTable.tsx";
import { ProgressBar } from "../components/Progress.tsx";

interface Task {
  requestId: string;
  actor: string;
  method: string;
  path: string;
  startedAt: string;
  state: "running" | "ok" | "failed";
  status?: number;
  durationMs?: number;
  progress?: { what: string; current: number; total: number };
  host?: string;
}

export function TasksPage() {
  const { session } = useSession();
  const [tasks, setTasks] = useState<Task[] | null>(null);
  const [error, setError] = useState<string | null>(null);
  useEffect(() => {
    let stopped = false;
    const load = () =>
      api<{ tasks: Task[] }>("GET", "/v1/tasks").then(
        (r) => {
          if (stopped) return;
          setTasks(r.tasks);
          setError(null);
        },
        (err: unknown) => !stopped && setError(errorText(err)),
      );
    void load();
    const timer = setInterval(() => void load(), 1500);
    return () => {
      stopped = true;
      clearInterval(timer);
    };
  }, []);
  const onManager = session?.server === "manager";
  const running = (tasks ?? []).filter((t) => t.state === "running");
  const done = (tasks ?? []).filter((t) => t.state !== "running");
  return (
    <main className="page">
      <h1>Tasks</h1>
      <ErrorLine error={error} />
      {tasks === null ? (
        <p>Loading…</p>
      ) : (
        <>
          <h2>Running</h2>
          {running.length === 0 ? (
            <p>Nothing is running.</p>
          ) : (
            <ul className="task-list" aria-label="Running tasks">
              {running.map((t) => (
                <li key={`${t.host ?? ""}/${t.requestId}`} data-testid={`task-${t.requestId}`}>
                  <code>
                    {t.method} {t.path}
                  </code>{" "}
                  by {t.actor}
                  {onManager && t.host ? ` on ${t.host}` : ""}, since {when(t.startedAt)}
                  <ProgressBar p={t.progress ?? null} label="Progress" />
                </li>
              ))}
            </ul>
          )}
          <h2>Finished</h2>
          {done.length === 0 ? (
            <p>No task has finished since the daemon started.</p>
          ) : (
            <table className="table" aria-label="Finished tasks">
              <TableHead columns={["started", "user", "task", ...(onManager ? ["host"] : []), "result", "took"]} />
              <tbody>
                {done.map((t) => (
                  <tr key={`${t.host ?? ""}/${t.requestId}/${t.startedAt}`} data-testid={`task-${t.requestId}`}>
                    <td>{when(t.startedAt)}</td>
                    <td>{t.actor}</td>
                    <td>
                      <code>
                        {t.method} {t.path}
                      </code>
                    </td>
                    {onManager && <td>{t.host ?? ""}</td>}
                    <td>
                      <span className={`badge ${t.state === "failed" ? "alarm" : ""}`}>{t.state === "ok" ? `ok (${t.status})` : `failed (${t.status})`}</span>
                    </td>
                    <td>{t.durationMs === undefined ? "" : `${(t.durationMs / 1000).toFixed(1)} s`}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          )}
        </>
      )}
    </main>
  );
}
