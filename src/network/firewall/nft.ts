/**
 * Loading and reading back vigil's nft tables inside vigil's netns. `load` hands nft the compiler's whole script
 * on stdin (`nft -f -`): the kernel applies it as one transaction or not at all. `check` is the same with `-c`
 * (parsed and validated by the kernel, nothing committed). `installedFor` reads the tables back and keeps one
 * VM's part: what `fw show` prints as "installed".
 */
import { existsSync } from "node:fs";
import { inNetns } from "../netns-exec.ts";
import type { HostNetns } from "../types.ts";
import { FW_TABLE, L2_TABLE, chainNames } from "./compile.ts";

export function netnsExists(ns: HostNetns): boolean {
  return existsSync(ns.path);
}

export async function loadRuleset(ns: HostNetns, text: string): Promise<void> {
  await inNetns(ns, "nft", ["-f", "-"], { input: text, what: "Loading the firewall ruleset (nft -f)" });
}

export async function checkRuleset(ns: HostNetns, text: string): Promise<void> {
  await inNetns(ns, "nft", ["-c", "-f", "-"], { input: text, what: "Checking the firewall ruleset (nft -c)" });
}

/** One installed chain: its name, the rules as nft prints them, and nft's JSON of them. */
export interface InstalledChain {
  family: "bridge" | "inet";
  chain: string;
  rules: string[];
  json: unknown[];
}

async function listTable(ns: HostNetns, family: "bridge" | "inet", table: string): Promise<{ text: string; json: unknown[] } | null> {
  try {
    const [text, json] = await Promise.all([
      inNetns(ns, "nft", ["list", "table", family, table], { what: "Reading the firewall ruleset" }),
      inNetns(ns, "nft", ["-j", "list", "table", family, table], { what: "Reading the firewall ruleset" }),
    ]);
    const parsed = JSON.parse(json.stdout) as { nftables?: unknown[] };
    return { text: text.stdout, json: Array.isArray(parsed.nftables) ? parsed.nftables : [] };
  } catch {
    return null; // no such table (nothing attached) or no netns
  }
}

/** Splits `nft list table` output into chain name → rule lines. */
export function chainsOfListing(text: string): Map<string, string[]> {
  const out = new Map<string, string[]>();
  let current: string[] | null = null;
  for (const line of text.split("\n")) {
    const start = /^\tchain (\S+) \{$/.exec(line);
    if (start) {
      current = [];
      out.set(start[1]!, current);
    } else if (line === "\t}") current = null;
    else if (current && line.startsWith("\t\t")) current.push(line.trim());
  }
  return out;
}

/** A vmap/set line cut down to the elements naming one of `taps` (the others are other VMs' business). */
export function onlyElementsOf(rule: string, taps: readonly string[]): string {
  const m = /^(.*?\{ )(.*)( \}.*)$/.exec(rule);
  if (!m) return rule;
  const kept = m[2]!.split(", ").filter((e) => taps.some((t) => e.includes(t)));
  return `${m[1]}${kept.join(", ")}${m[3]}`;
}

/** The installed chains of these taps (and the dispatch rules naming them), read back from the kernel. */
export async function installedFor(ns: HostNetns, taps: readonly string[]): Promise<InstalledChain[]> {
  if (!netnsExists(ns)) return [];
  const out: InstalledChain[] = [];
  for (const [family, table] of [["bridge", L2_TABLE], ["inet", FW_TABLE]] as const) {
    const listed = await listTable(ns, family, table);
    if (!listed) continue;
    const chains = chainsOfListing(listed.text);
    const wanted = new Set(taps.flatMap((t) => Object.values(chainNames(t))));
    for (const [name, rules] of chains) {
      if (!wanted.has(name)) continue;
      const json = listed.json.filter((o) => {
        const r = (o as { rule?: { chain?: string } }).rule;
        return r?.chain === name;
      });
      out.push({ family, chain: name, rules, json });
    }
    // The dispatch (vmap) lines that send this VM's traffic to its chains, e.g. the quarantine redirection.
    const dispatch: string[] = [];
    for (const [name, rules] of chains) {
      if (wanted.has(name)) continue;
      for (const r of rules) if (taps.some((t) => r.includes(t))) dispatch.push(`${name}: ${onlyElementsOf(r, taps)}`);
    }
    if (dispatch.length > 0) out.push({ family, chain: "(dispatch)", rules: dispatch, json: [] });
  }
  return out;
}
