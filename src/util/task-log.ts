/**
 * The tasks of this daemon (docs/web.md "Tasks"; `vigil task list`): every change a user asked for — each request
 * that is not a GET or HEAD — from its start until its answer has been sent in full (an export's last byte, not
 * its first), with the progress its operation reports (ProgressBus) while it runs, and how it ended. What Proxmox
 * shows as its task list; the audit log stays the durable record of who did what, so this is memory only: the
 * running tasks and the last RECENT finished ones, forgotten at restart.
 */
import type { ProgressBus, ProgressEvent } from "./progress.ts";

export interface Task {
  requestId: string;
  actor: string;
  method: string;
  path: string;
  startedAt: string;
  state: "running" | "ok" | "failed";
  /** The answer's HTTP status, once it ended. */
  status?: number;
  endedAt?: string;
  durationMs?: number;
  /** The last progress its operation reported (what, current of total). */
  progress?: { what: string; current: number; total: number };
}

/** Finished tasks kept for the list. */
export const RECENT = 200;
/** Running tasks kept: far above what one daemon serves at once; past it the oldest are dropped from the list (not stopped). */
const MAX_RUNNING = 2000;

export class TaskLog {
  readonly #running = new Map<string, Task>();
  readonly #recent: Task[] = [];
  readonly #unsubscribe: () => void;

  constructor(progress: ProgressBus, private readonly now: () => Date = () => new Date()) {
    this.#unsubscribe = progress.subscribe((e: ProgressEvent) => {
      const t = this.#running.get(e.requestId);
      if (t) t.progress = { what: e.what.slice(0, 200), current: e.current, total: e.total };
    });
  }

  /** A task starts; the returned function ends it with the answer's status (once: later calls do nothing). */
  begin(t: { requestId: string; actor: string; method: string; path: string }): (status: number) => void {
    const started = this.now();
    // A client may reuse its request id: each request is its own task, so a second one gets a suffix in the list.
    const key = this.#running.has(t.requestId) ? `${t.requestId}#${started.getTime()}` : t.requestId;
    const task: Task = { ...t, path: t.path.slice(0, 300), startedAt: started.toISOString(), state: "running" };
    this.#running.set(key, task);
    if (this.#running.size > MAX_RUNNING) this.#running.delete(this.#running.keys().next().value as string);
    let ended = false;
    return (status: number) => {
      if (ended) return;
      ended = true;
      this.#running.delete(key);
      const end = this.now();
      Object.assign(task, { state: status < 400 ? "ok" : "failed", status, endedAt: end.toISOString(), durationMs: end.getTime() - started.getTime() });
      this.#recent.push(task);
      if (this.#recent.length > RECENT) this.#recent.shift();
    };
  }

  /** Running tasks first (oldest first), then the finished ones (newest first), those `visible` allows. */
  list(visible: (t: Task) => boolean): Task[] {
    return [...[...this.#running.values()].filter(visible), ...[...this.#recent].reverse().filter(visible)].map((t) => ({ ...t, ...(t.progress ? { progress: { ...t.progress } } : {}) }));
  }

  close(): void {
    this.#unsubscribe();
  }
}
