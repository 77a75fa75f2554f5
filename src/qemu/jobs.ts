/**
 * QEMU block/snapshot jobs over QMP: start one, follow its progress, wait until it concludes, surface its error,
 * dismiss it. snapshot-save, snapshot-load and snapshot-delete are such jobs (QEMU ≥ 6.0).
 */
import { VigilError, q } from "../errors.ts";
import type { QmpClient } from "./qmp-client.ts";

interface JobInfo {
  id: string;
  type: string;
  status: string;
  "current-progress": number;
  "total-progress": number;
  error?: string;
}

export interface JobProgress {
  current: number;
  total: number;
}

let counter = 0;

/** Runs `command` as a job and resolves when it concluded successfully. */
export async function runJob(
  qmp: QmpClient,
  command: string,
  args: Record<string, unknown>,
  options: { timeoutMs?: number; onProgress?: (p: JobProgress) => void } = {},
): Promise<void> {
  const id = `vigil-${command}-${process.pid}-${++counter}`;
  const timeoutMs = options.timeoutMs ?? 600_000;
  const concluded = qmp.waitEvent("JOB_STATUS_CHANGE", { timeoutMs, filter: (e) => e.data.id === id && e.data.status === "concluded" });
  concluded.catch(() => undefined); // observed below; avoid an unhandled rejection if the start fails
  await qmp.execute(command, { "job-id": id, ...args });
  let done = false;
  const poll = async () => {
    while (!done) {
      const jobs = await qmp.execute<JobInfo[]>("query-jobs").catch(() => []);
      const job = jobs.find((j) => j.id === id);
      if (job && job["total-progress"] > 0) options.onProgress?.({ current: job["current-progress"], total: job["total-progress"] });
      await new Promise((r) => setTimeout(r, 100));
    }
  };
  const polling = options.onProgress ? poll() : Promise.resolve();
  try {
    await concluded;
  } finally {
    done = true;
    await polling;
  }
  const jobs = await qmp.execute<JobInfo[]>("query-jobs");
  const job = jobs.find((j) => j.id === id);
  await qmp.execute("job-dismiss", { id }).catch(() => undefined);
  if (job?.error) throw new VigilError("VIGIL_QEMU", `QEMU ${q(command)} failed: ${job.error}`);
}
