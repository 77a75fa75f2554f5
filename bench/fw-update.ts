/**
 * Firewall rule-update latency: the time from "a VM's policy changed" to "the kernel holds the new ruleset" —
 * compile, `nft -c` (the check that refuses a bad change before it is stored) and `nft -f` (one transaction) —
 * for a 1,000-rule policy against a 10-rule one, alternating in one run, inside a throw-away netns (the
 * firewall tests' lab: a bridge, two veth "taps"). Median of N runs each (default 9, at least 7) and the ratio.
 */
import { silentLogger } from "../src/log.ts";
import { FirewallEngine } from "../src/network/firewall/firewall-engine.ts";
import { parsePolicy, type Policy } from "../src/network/firewall/policy.ts";
import { Lab } from "../src/network/firewall/testing/lab.ts";
import { machineLine, median } from "./lib.ts";

function policyOf(n: number, salt: number): Policy {
  const rules = Array.from({ length: n }, (_, i) => ({
    direction: i % 3 === 0 ? ("out" as const) : ("in" as const),
    action: i % 5 === 0 ? ("drop" as const) : ("accept" as const),
    proto: i % 2 === 0 ? ("tcp" as const) : ("udp" as const),
    ports: i % 7 === 0 ? `${1000 + i}-${1010 + i}` : String(1 + ((i * 13 + salt) % 65000)),
    ...(i % 4 === 0 ? { peer: { cidr: `10.${(i >> 8) & 255}.${i & 255}.0/24` } } : {}),
  }));
  return parsePolicy({ rules, defaults: { in: "drop", out: "accept" } });
}

export async function run(args: string[]): Promise<void> {
  const runs = Math.max(7, Number(args[0] ?? 9));
  const lab = new Lab();
  try {
    await lab.start();
    const web = await lab.addVm("web");
    await lab.addVm("client");
    const policies = new Map<string, Policy>();
    const engine = new FirewallEngine({ policies: async () => new Map(policies), quarantined: async () => new Set(), services: async () => [] }, silentLogger());
    engine.connect(lab);
    process.stdout.write(`firewall update latency, ${runs} runs each, alternating; ${machineLine("n/a (no VM)")}\n`);
    const change = async (n: number, salt: number) => {
      const policy = policyOf(n, salt);
      const t0 = performance.now();
      await engine.exclusive(async ({ check, apply }) => {
        await check({ policy: { vmId: web.nic.vmId, policy } });
        policies.set(web.nic.vmId, policy);
        const r = await apply();
        if (!r.installed) throw new Error(r.reason);
      });
      return performance.now() - t0;
    };
    await change(10, 0); // warm up (first nft run, page cache)
    const small: number[] = [];
    const large: number[] = [];
    for (let i = 0; i < runs; i++) {
      small.push(await change(10, i + 1));
      large.push(await change(1000, i + 1));
    }
    const line = (label: string, xs: number[]) => process.stdout.write(`  ${label.padEnd(34)} median ${median(xs).toFixed(1)} ms  (min ${Math.min(...xs).toFixed(1)}, max ${Math.max(...xs).toFixed(1)}, n=${xs.length})\n`);
    line("10-rule policy (check + apply)", small);
    line("1,000-rule policy (check + apply)", large);
    process.stdout.write(`  ratio 1,000/10 = ${(median(large) / median(small)).toFixed(2)}\n`);
  } finally {
    await lab.close();
  }
}
