/** `vigil net counters|mirror|captures|forward`: inter-VM visibility and host port forwards (docs/network.md). */
import type { Command } from "commander";
import { ApiError, call, download } from "../client.ts";
import { printJson, printTable } from "../output.ts";
import { positiveInt, vmPath, writableOutput } from "./common.ts";

interface Dir {
  bytes: number;
  packets: number;
  errors: number;
  dropped: number;
}
interface Capture {
  id: string;
  vm: string;
  nic: string;
  bytes: number;
  packets: number;
  stoppedBy: string;
  startedAt: string;
  stoppedAt: string | null;
}
interface Forward {
  id: string;
  vm: string;
  nic: string;
  guestIp: string;
  guestPort: number;
  listen: string;
  createdAt: string;
  open?: boolean;
}

/** `--duration 30s`: 100ms..1h. */
export function parseDuration(v: string): number {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h)?$/.exec(v.trim());
  const ms = m ? Math.round(Number(m[1]) * ({ ms: 1, s: 1000, m: 60_000, h: 3_600_000 } as const)[(m[2] ?? "s") as "ms" | "s" | "m" | "h"]) : NaN;
  if (!m || ms < 100 || ms > 3_600_000) throw new ApiError("VIGIL_BAD_REQUEST", `Invalid --duration ${JSON.stringify(v)}: use 100ms..1h, e.g. 30s, 2m`, 0, "--duration");
  return ms;
}

/** Adds the visibility subcommands to `vigil net` (created here when the switch's part has not yet). */
export function registerNetworkVis(program: Command): void {
  const net = program.commands.find((c) => c.name() === "net") ?? program.command("net").description("Virtual networks: switch, firewall, visibility");

  net
    .command("counters <vm>")
    .description("Per-vNIC counters of the VM's plugged-in NICs (rx: sent by the VM, tx: delivered to it)")
    .option("--json", "machine-readable output")
    .action(async (vm: string, o: { json?: boolean }) => {
      const r = await call<Array<{ nic: string; tap: string; network: string; ip: string; rx: Dir; tx: Dir }>>("GET", vmPath(vm, "/net/counters"));
      if (o.json) return printJson(r);
      printTable(
        r.map((c) => ({ ...c, rxB: c.rx.bytes, rxP: c.rx.packets, rxE: c.rx.errors + c.rx.dropped, txB: c.tx.bytes, txP: c.tx.packets, txE: c.tx.errors + c.tx.dropped })),
        [
          ["nic", "NIC"],
          ["network", "NETWORK"],
          ["ip", "IP"],
          ["rxB", "RX BYTES"],
          ["rxP", "RX PKTS"],
          ["rxE", "RX ERR+DROP"],
          ["txB", "TX BYTES"],
          ["txP", "TX PKTS"],
          ["txE", "TX ERR+DROP"],
        ],
      );
    });

  net
    .command("mirror <vm>")
    .description("Capture one NIC's traffic to a pcap for a time window (needs network.manage; audited)")
    .option("--nic <name>", "the NIC (needed when the VM has several)")
    .requiredOption("--duration <time>", "how long, 100ms..1h (e.g. 30s)", parseDuration)
    .option("--max-bytes <n>", "stop when the capture reaches N bytes (default 64 MiB)", positiveInt("--max-bytes"))
    .option("--max-packets <n>", "stop after N packets (default 1,000,000)", positiveInt("--max-packets"))
    .option("--out <file>", "write the capture here when it is over")
    .option("--to-ids <ifname>", "instead of a capture file: copy the traffic to this interface in vigil's netns (an IDS tap)")
    .option("--json", "machine-readable output")
    .action(async (vm: string, o: { nic?: string; duration: number; maxBytes?: number; maxPackets?: number; out?: string; toIds?: string; json?: boolean }) => {
      if (o.toIds !== undefined) {
        if (o.out !== undefined) throw new ApiError("VIGIL_BAD_REQUEST", "--to-ids and --out exclude each other", 0, "--to-ids");
        const r = await call<{ nic: string; target: string; durationMs: number }>("POST", vmPath(vm, "/net/mirror-ids"), { nic: o.nic, durationMs: o.duration, toIds: o.toIds });
        if (o.json) return printJson(r);
        return void process.stdout.write(`mirrored ${vm}/${r.nic} to ${r.target} for ${r.durationMs} ms\n`);
      }
      const out = o.out === undefined ? undefined : writableOutput("--out", o.out);
      const cap = await call<Capture>("POST", vmPath(vm, "/net/mirror"), { nic: o.nic, durationMs: o.duration, maxBytes: o.maxBytes, maxPackets: o.maxPackets });
      if (out !== undefined) await download(`/v1/captures/${encodeURIComponent(cap.id)}`, undefined, out, { method: "GET" });
      if (o.json) return printJson({ ...cap, ...(out === undefined ? {} : { out }) });
      process.stdout.write(`capture ${cap.id}: ${cap.packets} packets, ${cap.bytes} bytes from ${vm}/${cap.nic} (stopped by ${cap.stoppedBy})${out ? `, written to ${out}` : ""}\n`);
    });

  net
    .command("captures")
    .description("List the mirror captures")
    .option("--json", "machine-readable output")
    .action(async (o: { json?: boolean }) => {
      const r = await call<Capture[]>("GET", "/v1/captures");
      if (o.json) return printJson(r);
      printTable(
        r.map((c) => ({ ...c })),
        [
        ["id", "ID"],
        ["vm", "VM"],
        ["nic", "NIC"],
        ["packets", "PACKETS"],
        ["bytes", "BYTES"],
        ["stoppedBy", "STOPPED BY"],
        ["startedAt", "STARTED"],
        ],
      );
    });

  const fwd = net
    .command("forward")
    .description("Reach a guest port from the host: listen on 127.0.0.0/8, relay into the VM (needs network.manage)")
    .argument("[vm]")
    .argument("[guest-port]")
    .option("--listen <addr:port>", "host loopback address and port, e.g. 127.0.0.1:8080")
    .option("--nic <name>", "the NIC whose address is used (default: the first)")
    // No --json here: a parent's option would swallow `forward list --json`.
    .action(async (vm: string | undefined, port: string | undefined, o: { listen?: string; nic?: string }) => {
      if (vm === undefined || port === undefined) throw new ApiError("VIGIL_BAD_REQUEST", "Usage: vigil net forward VM GUEST-PORT --listen 127.0.0.1:PORT", 0, "vm");
      if (!/^\d{1,5}$/.test(port)) throw new ApiError("VIGIL_BAD_REQUEST", `Invalid guest port ${JSON.stringify(port)}: use 1-65535`, 0, "guest-port");
      if (o.listen === undefined) throw new ApiError("VIGIL_BAD_REQUEST", "Missing --listen 127.0.0.1:PORT", 0, "--listen");
      const r = await call<Forward>("POST", vmPath(vm, "/net/forwards"), { guestPort: Number(port), listen: o.listen, nic: o.nic });
      process.stdout.write(`forward ${r.id}: ${r.listen} → ${vm}/${r.nic} ${r.guestIp}:${r.guestPort}\n`);
    });
  fwd
    .command("list")
    .description("List the port forwards")
    .option("--json", "machine-readable output")
    .action(async (o: { json?: boolean }) => {
      const r = await call<Forward[]>("GET", "/v1/net/forwards");
      if (o.json) return printJson(r);
      printTable(
        r.map((f) => ({ ...f, to: `${f.guestIp || "?"}:${f.guestPort}`, state: f.open ? "open" : "waiting for the VM" })),
        [
          ["id", "ID"],
          ["vm", "VM"],
          ["listen", "LISTEN"],
          ["to", "TO"],
          ["state", "STATE"],
        ],
      );
    });
  fwd
    .command("remove <id>")
    .description("Remove a port forward")
    .action(async (id: string) => {
      await call("DELETE", `/v1/net/forwards/${encodeURIComponent(id)}`);
      process.stdout.write(`forward ${id} removed\n`);
    });
}
