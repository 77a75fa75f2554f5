/**
 * Access to a running VM's guest agent for the API: a guarded, audited handle (`withAgent`, `vm.read` for
 * reads, `vm.exec` for commands) and the ping the CLI times. The agent speaks for the guest: what it answers is
 * hostile input, bounded by the agent client.
 */
import { VigilError, q } from "../errors.ts";
import type { RequestContext } from "../auth/guard.ts";
import type { AgentClient } from "../guest-agent/agent-client.ts";
import { assertAllowed } from "./state-machine.ts";
import type { VmCore } from "./vm-core.ts";

/** The guest agent of a running VM, for a read (`vm.read`) or an exec (`vm.exec`). */
export async function withAgent<T>(core: VmCore, ctx: RequestContext, name: string, op: { action: string; permission: "vm.read" | "vm.exec"; details?: Record<string, unknown> }, fn: (agent: AgentClient) => Promise<T>): Promise<T> {
  const vm = await core.lookup(ctx, name, op.action);
  return core.d.guard.run(ctx, { action: op.action, permission: op.permission, target: core.target(vm), owner: vm.owner, details: op.details, readOnly: op.permission === "vm.read" }, async () => {
    assertAllowed("agent", vm.name, vm.state, "talk to the agent of");
    if (!vm.spec.agent) throw new VigilError("VIGIL_INVALID_STATE", `Cannot talk to the agent of VM ${q(vm.name)}: it was created without one`);
    return fn(await core.runtime(vm).agentClient());
  });
}

/** Pings the guest agent `count` times (at most 1000); the round-trip times as the daemon measured them. */
export async function pingAgent(core: VmCore, ctx: RequestContext, name: string, count: number): Promise<{ rttMs: number[] }> {
  return withAgent(core, ctx, name, { action: "vm.guest-ping", permission: "vm.read" }, async (a) => {
    const rttMs: number[] = [];
    for (let i = 0; i < Math.min(count, 1000); i++) {
      const t0 = performance.now();
      await a.ping(5000);
      rttMs.push(performance.now() - t0);
    }
    return { rttMs };
  });
}
