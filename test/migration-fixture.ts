/**
 * Fixtures for the migration engine's integration test and benchmark: QEMUs spawned directly (not through vigil:
 * the engine is pure QMP), the tiny guest, and TLS certificates made with openssl the way docs/cluster.md names
 * them (a CA, `OU=migration` server and client certificates, plus a foreign CA for the refusal case).
 */
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { closeSync, existsSync, mkdirSync, readFileSync, readSync, rmSync, writeFileSync, chmodSync } from "node:fs";
import { join } from "node:path";
import { QmpClient } from "../src/qemu/qmp-client.ts";
import { AgentClient } from "../src/guest-agent/agent-client.ts";
import { openGuestRam } from "../src/host/guest-ram.ts";
import { guestRamBytes } from "../src/qemu/argv.ts";
import { ROOT } from "./harness.ts";

export function tinyImageDir(): string {
  const r = spawnSync("bash", [join(ROOT, "guest", "build-tiny.sh"), "--print-dir"], { encoding: "utf8" });
  if (r.status !== 0) throw new Error("The tiny guest image is not built: run guest/build-tiny.sh");
  return r.stdout.trim();
}

function sh(cmd: string, args: string[], cwd?: string): string {
  const r = spawnSync(cmd, args, { encoding: "utf8", ...(cwd ? { cwd } : {}) });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(" ")} failed: ${r.stderr}`);
  return r.stdout;
}

/** An EC P-256 CA in `dir` (ca-cert.pem, ca-key.pem). */
function makeCa(dir: string, name: string): void {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  sh("openssl", ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1",
    "-subj", `/O=vigil/CN=${name}`, "-keyout", join(dir, "ca-key.pem"), "-out", join(dir, "ca-cert.pem"),
    "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"]);
}

/** A leaf certificate signed by the CA in `caDir`, written as `<prefix>-cert.pem` / `<prefix>-key.pem` in `outDir`. */
function makeLeaf(caDir: string, outDir: string, prefix: "server" | "client", cn: string, san?: string): void {
  mkdirSync(outDir, { recursive: true, mode: 0o700 });
  const key = join(outDir, `${prefix}-key.pem`);
  const csr = join(outDir, `${prefix}.csr`);
  const ext = join(outDir, `${prefix}.ext`);
  sh("openssl", ["req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", `/O=vigil/OU=migration/CN=${cn}`, "-keyout", key, "-out", csr]);
  writeFileSync(ext, [
    "basicConstraints=critical,CA:FALSE",
    "keyUsage=critical,digitalSignature,keyEncipherment",
    `extendedKeyUsage=${prefix === "server" ? "serverAuth" : "clientAuth"}`,
    ...(san ? [`subjectAltName=${san}`] : []),
  ].join("\n") + "\n");
  sh("openssl", ["x509", "-req", "-in", csr, "-CA", join(caDir, "ca-cert.pem"), "-CAkey", join(caDir, "ca-key.pem"), "-CAcreateserial",
    "-days", "1", "-extfile", ext, "-out", join(outDir, `${prefix}-cert.pem`)]);
  chmodSync(key, 0o600);
}

export interface MigrationCerts {
  /** tls-creds-x509 dir for the target (ca-cert, server-cert, server-key). */
  serverDir: string;
  /** ... for the source (ca-cert, client-cert, client-key). */
  clientDir: string;
  /** A source dir whose client certificate a foreign CA signed (ca-cert is still the right CA). */
  foreignClientDir: string;
  /** A source dir with a right-CA client certificate of another name (passes verify, fails authz). */
  otherClientDir: string;
  /** The server certificate's DNS name (tls-hostname). */
  hostname: string;
  /** The client certificate's subject as openssl prints it in RFC 2253 order. */
  clientSubjectRfc2253: string;
}

export function makeMigrationCerts(dir: string, id: string): MigrationCerts {
  const ca = join(dir, "ca");
  const foreign = join(dir, "foreign-ca");
  makeCa(ca, "vigil CA");
  makeCa(foreign, "vigil CA"); // same name, different key: only the signature tells them apart
  const hostname = `${id}.migration.vigil`;
  const serverDir = join(dir, "server");
  const clientDir = join(dir, "client");
  const foreignClientDir = join(dir, "foreign-client");
  const otherClientDir = join(dir, "other-client");
  makeLeaf(ca, serverDir, "server", `${id}-dst`, `DNS:${hostname}`);
  makeLeaf(ca, clientDir, "client", `${id}-src`);
  makeLeaf(foreign, foreignClientDir, "client", `${id}-src`);
  makeLeaf(ca, otherClientDir, "client", `${id}-other`);
  for (const d of [serverDir, clientDir, otherClientDir]) writeFileSync(join(d, "ca-cert.pem"), readFileSync(join(ca, "ca-cert.pem")));
  // The foreign client trusts both CAs (QEMU checks its own certificate against its CA file at object-add, and
  // it must still trust the target): only the target's verification can refuse it.
  writeFileSync(join(foreignClientDir, "ca-cert.pem"), Buffer.concat([readFileSync(join(foreign, "ca-cert.pem")), readFileSync(join(ca, "ca-cert.pem"))]));
  const subject = sh("openssl", ["x509", "-in", join(clientDir, "client-cert.pem"), "-noout", "-subject", "-nameopt", "RFC2253"]).trim();
  return { serverDir, clientDir, foreignClientDir, otherClientDir, hostname, clientSubjectRfc2253: subject.replace(/^subject=/, "") };
}

export interface TestQemu {
  qmp: QmpClient;
  agentSocket: string;
  process: ChildProcess;
  dir: string;
  /** The guest's serial console so far. */
  console(): string;
  /** The QEMU's stderr so far (for failure messages). */
  stderr(): string;
  kill(): Promise<void>;
}

/**
 * Boots (or, with `incoming`, starts paused waiting for a migration) the tiny guest, 256 MiB (less 8 KiB, as vigil
 * sizes it under TCG: src/qemu/argv.ts guestRamBytes), 1 vCPU, TCG. `ram`: anonymous RAM (default) or vigil's
 * sealed memfd share=on backend; `cpu`: a `-cpu` model (default QEMU's).
 */
export async function startQemu(
  dir: string,
  options: { incoming?: boolean; disk?: string; disk1?: string; memoryMiB?: number; ram?: "anonymous" | "memfd-shared"; ramBytes?: number; cpu?: string },
): Promise<TestQemu> {
  const image = tinyImageDir();
  // the guest's RAM: `ramBytes` (a multiple of 8 KiB) when given, else what vigil gives `memoryMiB` under TCG
  const kib = (options.ramBytes ?? guestRamBytes(options.memoryMiB ?? 256, "tcg")) / 1024;
  // "memfd-shared": RAM the way vigil backs it (src/qemu/argv.ts): a sealed memfd mapped share=on
  const ram = options.ram === "memfd-shared"
    ? ["-machine", "pc-i440fx-7.2,accel=tcg,memory-backend=ram0", "-m", `${kib}K`, "-object", `memory-backend-memfd,id=ram0,size=${kib}K,share=on,seal=on`]
    : ["-machine", "pc-i440fx-7.2,accel=tcg", "-m", `${kib}K`];
  mkdirSync(dir, { recursive: true });
  const qmpSocket = join(dir, "qmp.sock");
  const agentSocket = join(dir, "agent.sock");
  const argv = [
    "-nodefaults", "-no-user-config", "-display", "none",
    ...ram, "-smp", "1", ...(options.cpu ? ["-cpu", options.cpu] : []),
    "-kernel", join(image, "vmlinuz"), "-initrd", join(image, "initrd.img"), "-append", "console=ttyS0 quiet panic=-1",
    "-chardev", `socket,id=qmp,path=${qmpSocket},server=on,wait=off`, "-mon", "chardev=qmp,mode=control",
    "-serial", `file:${join(dir, "console.log")}`,
    "-device", "virtio-serial-pci,id=vser0",
    "-chardev", `socket,id=agent0,path=${agentSocket},server=on,wait=off`,
    "-device", "virtserialport,bus=vser0.0,chardev=agent0,name=org.vigil.agent.0",
    ...(options.disk
      ? ["-blockdev", `driver=qcow2,node-name=disk0,file.driver=file,file.filename=${options.disk}`, "-device", "virtio-blk-pci,drive=disk0,id=vda"]
      : []),
    ...(options.disk1
      ? ["-blockdev", `driver=qcow2,node-name=disk1,file.driver=file,file.filename=${options.disk1}`, "-device", "virtio-blk-pci,drive=disk1,id=vdb"]
      : []),
    ...(options.incoming ? ["-S", "-incoming", "defer"] : []),
  ];
  const proc = spawn("nice", ["qemu-system-x86_64", ...argv], { stdio: ["ignore", "ignore", "pipe"] });
  let err = "";
  proc.stderr!.on("data", (d: Buffer) => (err = (err + d.toString()).slice(-8192)));
  const exited = new Promise<void>((r) => proc.once("exit", () => r()));
  const deadline = Date.now() + 15_000;
  while (!existsSync(qmpSocket)) {
    if (proc.exitCode !== null || Date.now() > deadline) throw new Error(`QEMU did not start: ${err}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  // the socket file appears at bind(), a moment before QEMU listens on it
  let qmp: QmpClient | undefined;
  while (!qmp) {
    try {
      qmp = await QmpClient.connect(qmpSocket);
    } catch (e) {
      if (proc.exitCode !== null || Date.now() > deadline) throw new Error(`QEMU did not start: ${err} (${String(e)})`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  return {
    qmp,
    agentSocket,
    process: proc,
    dir,
    stderr: () => err,
    console: () => (existsSync(join(dir, "console.log")) ? readFileSync(join(dir, "console.log"), "utf8") : ""),
    async kill() {
      await qmp.close().catch(() => undefined);
      if (proc.exitCode === null && proc.signalCode === null) proc.kill("SIGKILL");
      await exited;
    },
  };
}

/** A qcow2 overlay over the tiny image's data disk. */
export function overlay(path: string): string {
  sh("qemu-img", ["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", join(tinyImageDir(), "disk.qcow2"), path]);
  return path;
}

/** A standalone qcow2 of `mib` MiB: random bytes when `random`, else empty. Returns the sha256 of its contents. */
export function standaloneDisk(path: string, mib: number, random: boolean): string {
  if (random) {
    const raw = `${path}.raw`;
    sh("dd", ["if=/dev/urandom", `of=${raw}`, "bs=1M", `count=${mib}`, "status=none"]);
    sh("qemu-img", ["convert", "-q", "-f", "raw", "-O", "qcow2", raw, path]);
    const sum = sh("sha256sum", [raw]).split(" ")[0]!;
    rmSync(raw);
    return sum;
  }
  sh("qemu-img", ["create", "-q", "-f", "qcow2", path, `${mib}M`]);
  return "";
}

/** Connects to a guest's agent and waits until it answers. */
export async function agentOf(vm: TestQemu, timeoutMs = 90_000): Promise<AgentClient> {
  const agent = await AgentClient.connect(vm.agentSocket);
  await agent.waitUntilAnswering(timeoutMs);
  return agent;
}

/** Runs an allow-listed guest command; stdout decoded and trimmed; throws on a non-zero exit. */
export async function guestRun(agent: AgentClient, argv: string[]): Promise<string> {
  const r = await agent.exec(argv);
  const out = Buffer.from(r.stdout, "base64").toString().trim();
  if (r.exitCode !== 0) throw new Error(`${argv.join(" ")} exited ${r.exitCode}: ${out} ${Buffer.from(r.stderr, "base64").toString().trim()}`);
  return out;
}

/** The lines of a guest console that tell of a kernel in trouble (an oops, a BUG, a panic); empty when none. */
export function kernelTrouble(console: string): string[] {
  return console.split("\n").filter((l) => /Oops|BUG[: ]|general protection fault|Kernel panic|RIP: |Call Trace/.test(l));
}

/**
 * The guest-physical pages (4 KiB frame numbers) whose contents differ between two QEMUs started with
 * `ram: "memfd-shared"` (read through each one's RAM memfd, src/host/guest-ram.ts). Meant for a source and its
 * target once the migration completed and before the target resumes: both are stopped then, and a correct
 * migration leaves the two RAMs byte for byte equal.
 */
export function ramDiff(a: TestQemu, b: TestQemu, bytes: number): number[] {
  const fds = [openGuestRam(a.process.pid!, bytes), openGuestRam(b.process.pid!, bytes)];
  try {
    const chunk = 1 << 20;
    const bufs = [Buffer.alloc(chunk), Buffer.alloc(chunk)];
    const pages: number[] = [];
    for (let off = 0; off < bytes; off += chunk) {
      const n = Math.min(chunk, bytes - off);
      for (const i of [0, 1]) if (readSync(fds[i]!, bufs[i]!, 0, n, off) !== n) throw new Error(`short read of guest RAM at ${off}`);
      if (bufs[0]!.compare(bufs[1]!, 0, n, 0, n) === 0) continue;
      for (let p = 0; p < n; p += 4096) {
        if (bufs[0]!.compare(bufs[1]!, p, p + 4096, p, p + 4096) !== 0) pages.push((off + p) / 4096);
      }
    }
    return pages;
  } finally {
    for (const fd of fds) closeSync(fd!);
  }
}
