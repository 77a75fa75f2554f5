/** `vigil task list`: the changes users asked for, running (with progress) and recent (util/task-log.ts). */
import type { Command } from "commander";
import { call } from "../client.ts";
import { printJson, printTable } from "../output.ts";
import type { Task as TaskRecord } from "../../util/task-log.ts";

/** A task as the daemon lists it, with the host the cluster manager adds. */
type Task = TaskRecord & { host?: string };

export function registerTasks(program: Command): void {
  const task = program.command("task").description("Tasks: the changes users asked for, running and recent (your own; everyone's with audit.read)");
  task
    .command("list", { isDefault: true })
    .description("Running tasks with their progress, then the last finished ones, newest first")
    .option("--running", "only the running ones")
    .option("--json", "machine-readable output")
    .action(async (o: { running?: boolean; json?: boolean }) => {
      const { tasks } = await call<{ tasks: Task[] }>("GET", "/v1/tasks");
      const shown = o.running ? tasks.filter((t) => t.state === "running") : tasks;
      if (o.json) return printJson(shown);
      const pct = (p: Task["progress"]) => (p && p.total > 0 ? `${p.what} ${Math.min(100, Math.round((p.current / p.total) * 100))}%` : "");
      printTable(
        shown.map((t) => ({
          started: t.startedAt,
          user: t.actor,
          task: `${t.method} ${t.path}`,
          ...(tasks.some((x) => x.host) ? { host: t.host ?? "" } : {}),
          state: t.state === "running" ? "running" : `${t.state} (${t.status ?? "?"})`,
          took: t.durationMs === undefined ? "" : `${(t.durationMs / 1000).toFixed(1)} s`,
          progress: pct(t.progress),
        })),
        [["started", "STARTED"], ["user", "USER"], ["task", "TASK"], ...(tasks.some((x) => x.host) ? [["host", "HOST"] as [string, string]] : []), ["state", "STATE"], ["took", "TOOK"], ["progress", "PROGRESS"]],
      );
    });
}
