/**
 * Runs a host tool inside vigil's network namespace (docs/network.md): `nsenter --net=/run/netns/NAME -- tool
 * args`, never a shell, with runCommand's timeout, bounded output and error wording. Every part of the network
 * (switch, firewall, visibility) goes through here, so "inside the namespace" is one rule in one place.
 */
import { runCommand, type RunResult } from "../util/run-command.ts";
import type { HostNetns } from "./types.ts";

export function inNetns(
  ns: HostNetns,
  tool: string,
  args: readonly string[],
  options: { timeoutMs?: number; input?: string | undefined; what?: string } = {},
): Promise<RunResult> {
  return runCommand("nsenter", [`--net=${ns.path}`, "--", tool, ...args], { timeoutMs: options.timeoutMs ?? 30_000, input: options.input, what: options.what ?? `${tool} (in ${ns.name})` });
}
