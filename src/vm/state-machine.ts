/**
 * The VM state machine. States are persisted; `starting` and `stopping` are held only while an operation runs
 * (under the VM's lock), so after a vigil crash they tell reattach what was in flight. Each action lists the
 * states it is allowed from; anything else is a clear "Cannot <action> VM ...: it is <state>" error.
 *
 * `incoming` is a VM whose identity arrived from another host (migration/dossier.ts) and whose state is still on
 * its way: incoming → running at switchover (`commitIncoming`), → stopped for a cold move, → deleted on abort. It
 * is not a live state: recover() aborts it (the target died mid-migration), never reattaches it.
 */
import { errors } from "../errors.ts";

export const VM_STATES = ["stopped", "starting", "running", "paused", "stopping", "crashed", "incoming"] as const;
export type VmState = (typeof VM_STATES)[number];

/** States in which a QEMU process exists (or should). */
export const LIVE_STATES: readonly VmState[] = ["starting", "running", "paused", "stopping"];

export const ALLOWED_FROM = {
  start: ["stopped", "crashed"],
  stop: ["running", "paused"],
  kill: ["running", "paused", "starting", "stopping"],
  pause: ["running"],
  resume: ["paused"],
  restart: ["running", "paused"],
  destroy: ["stopped", "crashed"],
  agent: ["running"],
  console: ["running", "paused"],
  modify: ["stopped", "crashed"],
  // migration (vm-migration.ts): an incoming VM is started with -incoming defer, committed or aborted; a VM leaves
  // for another host live (running, paused) or cold (stopped, crashed).
  "start-incoming": ["incoming"],
  "commit-incoming": ["incoming"],
  "abort-incoming": ["incoming"],
  migrate: ["running", "paused", "stopped", "crashed"],
} as const satisfies Record<string, readonly VmState[]>;

export type VmAction = keyof typeof ALLOWED_FROM;

export function assertAllowed(action: VmAction, vmName: string, state: VmState, verb: string = action): void {
  const allowed: readonly VmState[] = ALLOWED_FROM[action];
  if (!allowed.includes(state)) throw errors.invalidState(verb, vmName, state, allowed);
}

export function isLive(state: VmState): boolean {
  return LIVE_STATES.includes(state);
}
