/**
 * Test support for the IDS integration tests (test/integration/introspection*.test.ts): waiting on a vigil
 * daemon's watch and findings through its API, and pausing a VM around an attacker's writes to its RAM.
 * Nothing in vigil imports this file.
 */
import type { FindingRecord, WatchStatus } from "../service.ts";

/** What these helpers need of a daemon (test/harness.ts's DaemonHandle has it). */
export interface DaemonApi {
  api<T = unknown>(method: string, path: string, body?: unknown): Promise<T>;
}

/** Polls `probe` every 150 ms until it returns something other than undefined; throws after `timeoutMs`. */
export async function until<T>(what: string, timeoutMs: number, probe: () => Promise<T | undefined>): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await probe();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 150));
  }
}

/** The watch of `vm` (GET /v1/watches); throws when it is not watched. */
export async function watchOf(d: DaemonApi, vm: string): Promise<WatchStatus> {
  const { watches } = await d.api<{ watches: WatchStatus[] }>("GET", "/v1/watches");
  const w = watches.find((x) => x.vm === vm);
  if (!w) throw new Error(`${vm} is not watched`);
  return w;
}

/** The sequence number of the newest audit record (0 when there is none). */
export const lastSeq = async (d: DaemonApi): Promise<number> => (await d.api<{ records: Array<{ seq: number }> }>("GET", "/v1/audit?tail=true&limit=1")).records[0]?.seq ?? 0;

/** The first `check` finding of `vm` recorded after audit sequence number `after`. */
export function waitFinding(d: DaemonApi, vm: string, check: string, after: number, timeoutMs = 20_000): Promise<FindingRecord> {
  return until(`a ${check} finding on ${vm}`, timeoutMs, async () => {
    const { recent } = await d.api<{ recent: FindingRecord[] }>("GET", `/v1/vms/${vm}/findings?limit=100`);
    return recent.find((f) => f.check === check && f.seq > after);
  });
}

/** Runs `fn` with the VM paused through the API (as the attacker: memory is written while no vCPU runs). */
export async function whilePaused<T>(d: DaemonApi, vm: string, fn: () => T | Promise<T>): Promise<T> {
  await d.api("POST", `/v1/vms/${vm}/pause`);
  try {
    return await fn();
  } finally {
    await d.api("POST", `/v1/vms/${vm}/resume`);
  }
}

/** Waits until the watch of `vm` has no active finding. */
export async function waitClean(d: DaemonApi, vm: string, timeoutMs = 20_000): Promise<void> {
  await until(`${vm} clean again`, timeoutMs, async () => ((await watchOf(d, vm)).activeFindings === 0 ? true : undefined));
}
