/**
 * Host-side port forwards (issue 11, the hard-rule paragraph): `vigil net forward VM GUEST-PORT --listen
 * 127.0.0.1:PORT` is how a user on the host reaches a guest service without vigil ever configuring the host's
 * interfaces. The daemon listens on host loopback (only 127.0.0.0/8 is accepted); each accepted connection is
 * relayed through a unix socket in the daemon's 0700 run dir to a small relay that runs inside vigil's netns
 * (`nsenter --net=… node -e RELAY`) and connects to VM-IP:GUEST-PORT there. A unix socket is reachable from
 * both namespaces (it is a path, not an interface), so nothing is routed between them. The relay's source is a
 * constant run with `node -e`, so it works the same from dist/ and under tsx; it exits when its stdin (a pipe
 * from the daemon) closes, so a dead daemon leaves no relay behind.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { rmSync } from "node:fs";
import { createConnection, createServer, isIPv4, type Server, type Socket } from "node:net";
import { join } from "node:path";
import { VigilError, q } from "../errors.ts";
import type { HostNetns } from "./types.ts";

/** The relay inside the netns: unix socket in, TCP to the guest out. Plain CommonJS for `node -e`. */
export const RELAY_SOURCE = `
const net = require("node:net");
const fs = require("node:fs");
const [sock, host, port] = process.argv.slice(1);
try { fs.unlinkSync(sock); } catch {}
const server = net.createServer((c) => {
  const g = net.connect({ host, port: Number(port) });
  c.pipe(g); g.pipe(c);
  const end = () => { c.destroy(); g.destroy(); };
  c.on("error", end); g.on("error", end); c.on("close", end); g.on("close", end);
});
server.listen(sock, () => { fs.chmodSync(sock, 0o600); process.stdout.write("ready\\n"); });
server.on("error", (e) => { process.stderr.write(String(e) + "\\n"); process.exit(1); });
process.stdin.on("end", () => process.exit(0));
process.stdin.on("error", () => process.exit(0));
process.stdin.resume();
`;

export interface ForwardSpec {
  id: string;
  vmId: string;
  vmName: string;
  guestIp: string;
  guestPort: number;
  listenHost: string;
  listenPort: number;
}

/** Parses `--listen 127.0.0.1:PORT`: only loopback (127.0.0.0/8), port 1-65535. */
export function parseListen(value: string): { host: string; port: number } {
  const m = /^([0-9.]{7,15}):([0-9]{1,5})$/.exec(value);
  const host = m?.[1] ?? "";
  const port = Number(m?.[2]);
  if (!m || !isIPv4(host)) throw new VigilError("VIGIL_BAD_REQUEST", `Cannot forward: listen ${q(value)} is not IPV4:PORT (e.g. 127.0.0.1:8080)`, { field: "listen" });
  if (!host.startsWith("127.")) {
    throw new VigilError("VIGIL_BAD_REQUEST", `Cannot forward: listen address ${q(host)} is not on host loopback (only 127.0.0.0/8 is allowed)`, { field: "listen" });
  }
  if (!Number.isInteger(port) || port < 1 || port > 65_535) throw new VigilError("VIGIL_BAD_REQUEST", `Cannot forward: listen port ${q(m[2])} is not 1-65535`, { field: "listen" });
  return { host, port };
}

export function checkGuestPort(port: number): void {
  if (!Number.isInteger(port) || port < 1 || port > 65_535) throw new VigilError("VIGIL_BAD_REQUEST", `Cannot forward: guest port ${q(port)} is not 1-65535`, { field: "guestPort" });
}

interface Live {
  spec: ForwardSpec;
  relay: ChildProcess;
  server: Server;
  sock: string;
  conns: Set<Socket>;
}

/** The live forwards of this daemon. Every forward owns a relay process and a listening socket; close() ends all. */
export class ForwardManager {
  private readonly live = new Map<string, Live>();

  constructor(
    private readonly ns: () => HostNetns,
    /** The daemon's 0700 run dir: the relays' unix sockets live there. */
    private readonly runDir: string,
  ) {}

  /** Starts a forward; on any failure nothing is left (no relay, no socket file, no listener). */
  async open(spec: ForwardSpec): Promise<void> {
    checkGuestPort(spec.guestPort);
    parseListen(`${spec.listenHost}:${spec.listenPort}`);
    if (!isIPv4(spec.guestIp)) throw new VigilError("VIGIL_BAD_REQUEST", `Cannot forward: ${q(spec.guestIp)} is not an IPv4 address`, { field: "guestIp" });
    if (!/^[A-Za-z0-9-]{1,64}$/.test(spec.id)) throw new VigilError("VIGIL_BAD_REQUEST", `Cannot forward: id ${q(spec.id)} is not a plain name`, { field: "id" });
    if (this.live.has(spec.id)) throw new VigilError("VIGIL_CONFLICT", `Forward ${q(spec.id)} is already open`);
    const sock = join(this.runDir, `fwd-${spec.id}.sock`);
    const relay = spawn("nsenter", [`--net=${this.ns().path}`, "--", process.execPath, "-e", RELAY_SOURCE, "--", sock, spec.guestIp, String(spec.guestPort)], {
      stdio: ["pipe", "pipe", "pipe"],
    });
    let stderr = "";
    relay.stderr?.on("data", (d: Buffer) => {
      if (stderr.length < 4096) stderr += d.toString();
    });
    const cleanup = () => {
      relay.kill("SIGKILL");
      rmSync(sock, { force: true });
    };
    try {
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => reject(new VigilError("VIGIL_TIMEOUT", "Cannot forward: the relay in vigil's netns did not start in 10 s")), 10_000);
        relay.stdout?.on("data", (d: Buffer) => {
          if (d.toString().includes("ready")) {
            clearTimeout(timer);
            resolve();
          }
        });
        relay.on("error", (err) => {
          clearTimeout(timer);
          reject(new VigilError("VIGIL_HOST", `Cannot forward: the relay did not start: ${err.message}`, { cause: err }));
        });
        relay.on("exit", (code) => {
          clearTimeout(timer);
          reject(new VigilError("VIGIL_HOST", `Cannot forward: the relay exited (${code}): ${stderr.trim()}`));
        });
      });
      const conns = new Set<Socket>();
      const server = createServer((c) => {
        conns.add(c);
        const u = createConnection(sock);
        c.pipe(u);
        u.pipe(c);
        const end = () => {
          c.destroy();
          u.destroy();
          conns.delete(c);
        };
        c.on("error", end);
        u.on("error", end);
        c.on("close", end);
        u.on("close", end);
      });
      await new Promise<void>((resolve, reject) => {
        server.once("error", (err: NodeJS.ErrnoException) =>
          reject(new VigilError(err.code === "EADDRINUSE" ? "VIGIL_CONFLICT" : "VIGIL_HOST", `Cannot forward: cannot listen on ${spec.listenHost}:${spec.listenPort}: ${err.code ?? err.message}`, { field: "listen", cause: err })),
        );
        server.listen(spec.listenPort, spec.listenHost, () => resolve());
      });
      relay.removeAllListeners("exit");
      this.live.set(spec.id, { spec, relay, server, sock, conns });
    } catch (err) {
      cleanup();
      throw err;
    }
  }

  list(): ForwardSpec[] {
    return [...this.live.values()].map((l) => l.spec);
  }

  /** The relay's pid (tests check it is gone after close). */
  relayPid(id: string): number | undefined {
    return this.live.get(id)?.relay.pid;
  }

  /** Ends a forward: stops listening, cuts its connections, stops the relay, removes its socket. Idempotent. */
  async close(id: string): Promise<void> {
    const l = this.live.get(id);
    if (!l) return;
    this.live.delete(id);
    for (const c of l.conns) c.destroy();
    await new Promise<void>((resolve) => l.server.close(() => resolve()));
    l.relay.stdin?.end();
    l.relay.kill("SIGTERM");
    rmSync(l.sock, { force: true });
  }

  async closeAll(): Promise<void> {
    for (const id of [...this.live.keys()]) await this.close(id);
  }
}
