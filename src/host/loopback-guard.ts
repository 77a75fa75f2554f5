/**
 * Open NICs cut off from the host itself. QEMU's `-netdev user` (libslirp) turns a guest's connection to the
 * gateway 10.0.2.2 into a connection from QEMU to the host's 127.0.0.1, and QEMU 7.2 has no option to turn that
 * off (libslirp's disable_host_loopback is not exposed). So the host's packet filter does it: jailed QEMUs run as
 * per-VM uids from host/vm-uid-range.ts, and an nftables table drops every packet such a socket sends to the host
 * itself — out through `lo` (which is where every locally addressed packet goes: 127.0.0.0/8, ::1 and the host's
 * own addresses alike), plus 127.0.0.0/8 and ::1 by address as a second net. The guest still reaches the outside
 * world through an open NIC; it never reaches a service of the host (vigil's API on 127.0.0.1:7450 included).
 * A DNS resolver on loopback (127.0.0.53) is not reachable from open NICs either.
 *
 * The table is replaced atomically (`nft -f`: one transaction that adds, deletes and re-creates it), so running
 * it again is harmless, and nothing ever removes it: not a daemon stop, not a crash. It is (re)installed when the
 * daemon starts and before every start of a VM with an open NIC; if that fails (no nft, no CAP_NET_ADMIN) the VM
 * is refused with the reason. Restricted NICs (restrict=on: slirp lets nothing out) do not need it.
 */
import { VigilError } from "../errors.ts";
import { runCommand } from "../util/run-command.ts";
import { VM_UID_BASE, VM_UID_COUNT } from "./vm-uid-range.ts";

export const GUARD_TABLE = "vigil_guard";
const NFT_TIMEOUT_MS = 10_000;
const MAX_OUTPUT = 64 * 1024;

/** The nftables script: creates the table if missing, deletes it, and creates it anew, in one transaction. */
function guardRuleset(): string {
  const uids = `${VM_UID_BASE}-${VM_UID_BASE + VM_UID_COUNT - 1}`;
  return [
    `table inet ${GUARD_TABLE}`,
    `delete table inet ${GUARD_TABLE}`,
    `table inet ${GUARD_TABLE} {`,
    `  chain output {`,
    `    type filter hook output priority filter; policy accept;`,
    `    meta skuid ${uids} oif "lo" counter drop comment "VM uids never reach the host itself"`,
    `    meta skuid ${uids} ip daddr 127.0.0.0/8 counter drop`,
    `    meta skuid ${uids} ip6 daddr ::1 counter drop`,
    `  }`,
    `}`,
    ``,
  ].join("\n");
}

/** Runs nft with `args`, `input` on stdin (util/run-command: no shell, timeout, bounded output); resolves with stdout. */
async function nft(args: string[], input?: string): Promise<string> {
  const binary = process.env.VIGIL_NFT ?? "nft";
  try {
    return (await runCommand(binary, args, { input, timeoutMs: NFT_TIMEOUT_MS, maxOutputBytes: MAX_OUTPUT, what: `${binary} ${args.join(" ")}` })).stdout;
  } catch (err) {
    // The one failure worth its own words: which package brings nft.
    if (((err as Error).cause as NodeJS.ErrnoException | undefined)?.code === "ENOENT") throw new VigilError("VIGIL_HOST", `${binary} is not installed (Debian package nftables)`, { cause: err });
    throw err;
  }
}

/** Installs (or atomically replaces) the guard table. Throws a VigilError with nft's reason on failure. */
export async function installLoopbackGuard(): Promise<void> {
  await nft(["-f", "-"], guardRuleset());
}

/** The guard table as nft lists it (tests, diagnostics). */
export function listLoopbackGuard(): Promise<string> {
  return nft(["list", "table", "inet", GUARD_TABLE]);
}
