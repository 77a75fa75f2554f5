/**
 * Spec in, QEMU argv out: a pure function, covered by golden files in testdata/argv (like Proxmox's cfg2cmd and
 * libvirt's .args tests). Every VM gets the same hardened baseline; nothing here reads the environment.
 *
 * Why each baseline flag:
 * - `-S`: the guest starts paused, so vigil attaches QMP (and anything else) before the first instruction runs.
 * - `-nodefaults -no-user-config`: no device or config file vigil did not ask for.
 * - `-sandbox on,...=deny`: seccomp: no obsolete syscalls, no setuid, no fork/exec, no resource-limit changes.
 * - `dump-guest-core=off`: a QEMU crash does not write the guest's RAM (its secrets) into a core file.
 * - a pinned machine type: the virtual hardware does not change under a VM when QEMU is upgraded.
 * - RAM in a sealed memfd (`memory-backend-memfd`): never a file on any filesystem, gone with the process;
 *   introspection reads it through QEMU's descriptor (host/guest-ram.ts). Memory snapshots still go to qcow2.
 *   Under TCG the RAM is 8 KiB short of the spec's size, so that live migration does not lose guest writes
 *   (`guestRamBytes`).
 * - `vmgenid`: the guest learns when it has been forked (clone, revert) and reseeds its RNG.
 */
import { BugError, VigilError } from "../errors.ts";
import type { VmSpec } from "../vm/spec.ts";
import type { VmLayout } from "../paths.ts";

export type Accelerator = "kvm" | "tcg";

export interface LaunchPlan {
  spec: VmSpec;
  uuid: string;
  vmgenid: string;
  accel: Accelerator;
  paths: Pick<VmLayout, "qmpSocket" | "serialSocket" | "agentSocket" | "vtimeSocket" | "serialPipe" | "agentPipe" | "pidFile" | "consoleLog">;
  /** Path of each disk's own (writable) image, by disk name. */
  diskFiles: Record<string, string>;
  /**
   * Each disk's read-only backing chain, nearest layer first, as vigil knows it (never as the writable top image's
   * header claims it: a compromised QEMU may rewrite that). When given, the chain is spelled out node by node
   * (`backing=` on every qcow2 node, empty — none — at the bottom) and a layer with `fd` is read through `-add-fd`
   * (`/dev/fdset/<fd>`), a descriptor the jail helper opened. Without it QEMU follows the headers (old behaviour).
   */
  backing?: Record<string, Array<{ file: string; format: string; fd?: number | undefined }>> | undefined;
  /** The tap descriptor of each bridged NIC, by NIC name: the jail helper opened it (`--tap`), QEMU never does. */
  tapFds?: Record<string, number> | undefined;
  /**
   * `"defer"`: the target of a migration (docs/cluster.md, step 3). QEMU waits for its state with `-incoming defer`
   * (the channel is set later, over QMP `migrate-incoming`, after the TLS and NBD objects exist), and the guest
   * never starts from its own reset state.
   */
  incoming?: "defer" | undefined;
  /**
   * Record/replay (src/recording, docs/recording.md): QEMU runs under icount and writes (`record`) or reads
   * (`replay`) the log of every non-deterministic input. QEMU 7.2 records only the chardevs given as `-serial`, so
   * the agent moves to the second UART (the guest's agent listens there when its command line says
   * `vigil.agent=ttyS1`), there is no virtio-serial and no vtime channel; each disk gets a `blkreplay` node, each
   * NIC a `filter-replay`. A replay's NICs are slirp with `restrict=on`: replay never talks to a backend.
   */
  rr?: { mode: "record" | "replay"; logFile: string } | undefined;
}

/** Why a bridged NIC cannot run without the jail: QEMU (unprivileged, netns-less) gets the tap only as a descriptor. */
export const BRIDGED_NEEDS_JAIL = "bridged NICs need the jail (it opens the tap)";

/** Escapes a value for QEMU's comma-separated option syntax (a literal comma is written twice). */
export function optValue(value: string): string {
  if (/[\0\n\r]/.test(value)) throw new BugError(`QEMU option value contains a control character: ${JSON.stringify(value)}`);
  return value.replaceAll(",", ",,");
}

/** Builds `key=value,key=value` with escaping. */
function opts(head: string, pairs: Array<[string, string | number | undefined]>): string {
  const parts = [head];
  for (const [k, v] of pairs) if (v !== undefined) parts.push(`${k}=${optValue(String(v))}`);
  return parts.join(",");
}

/**
 * The bytes of RAM QEMU gives a guest whose spec says `memoryMiB`: exactly that under KVM; under TCG 8 KiB less.
 *
 * Why: QEMU 7.2 syncs a RAM block's migration dirty bitmap on a fast path when the block's length is a multiple
 * of 64 pages (256 KiB), and that path clears the dirty bits without resetting TCG's TLB (upstream fixed it in
 * QEMU 9.0: "physmem: Fix migration dirty bitmap coherency with TCG memory access"; Debian 12's 7.2.22 lacks
 * it). A vCPU store through a TLB entry made while its page was dirty then never sets the bit again, so a page
 * the guest writes after its last copy is not sent: the target resumes with stale pages (slab corruption,
 * oopses; test/integration/precopy-ram.test.ts compares both RAMs). A block of any other length takes the
 * page-by-page path, which does reset the TLB. 8 KiB, not 4: QEMU rounds `-m` up to 8 KiB. KVM tracks dirty
 * pages itself and keeps the exact size (its page-by-page path would be slow on large guests).
 */
export function guestRamBytes(memoryMiB: number, accel: Accelerator): number {
  return memoryMiB * 1024 * 1024 - (accel === "tcg" ? TCG_RAM_SHORTFALL : 0);
}
/** See `guestRamBytes`: not a multiple of 256 KiB, and a multiple of 8 KiB. */
const TCG_RAM_SHORTFALL = 8192;

/** `-m` and the RAM backend's `size`: whole MiB when they are, else KiB. */
function ramSizeOption(memoryMiB: number, accel: Accelerator): string {
  const bytes = guestRamBytes(memoryMiB, accel);
  return bytes % (1024 * 1024) === 0 ? `${bytes / (1024 * 1024)}M` : `${bytes / 1024}K`;
}

/** What a recording VM's kernel command line gets: the agent on ttyS1 (guest/rootfs/usr/lib/vigil/agent-supervisor). */
export const RR_AGENT_CMDLINE = "vigil.agent=ttyS1";

export const SANDBOX = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny";

/**
 * A qcow2 node whose backing vigil names: another node, or none (`null`). "None" needs QEMU's JSON syntax: the
 * key=value form can only say `backing=` (an empty string), which QEMU 7.2 accepts but has deprecated.
 */
function qcow2Node(node: string, file: string, readOnly: boolean, backing: string | null): string {
  if (backing !== null) return opts("driver=qcow2", [["node-name", node], ["file", file], ...(readOnly ? [["read-only", "on"] as [string, string]] : []), ["backing", backing]]);
  return JSON.stringify({ driver: "qcow2", "node-name": node, file, ...(readOnly ? { "read-only": true } : {}), backing: null });
}

export function buildArgv(plan: LaunchPlan): string[] {
  const { spec, paths } = plan;
  const argv: string[] = [
    "-name", opts(`guest=${optValue(spec.name)}`, [["debug-threads", "on"]]),
    "-uuid", plan.uuid,
    "-S",
    "-nodefaults",
    "-no-user-config",
    "-sandbox", SANDBOX,
    "-machine", opts(spec.machine, [["accel", plan.accel], ["dump-guest-core", "off"], ["memory-backend", "ram0"]]),
    "-cpu", spec.cpu,
    "-smp", String(spec.vcpus),
    "-m", ramSizeOption(spec.memoryMiB, plan.accel),
    ...(plan.rr ? ["-icount", opts("shift=auto", [["rr", plan.rr.mode], ["rrfile", plan.rr.logFile]])] : []),
    // A recording's end point is taken while QEMU is paused: a guest power-off pauses it instead of exiting — in the
    // replay too, which must stop there rather than exit one instruction short of it.
    ...(plan.rr ? ["-action", "shutdown=pause"] : []),
    "-object", opts("memory-backend-memfd", [["id", "ram0"], ["size", ramSizeOption(spec.memoryMiB, plan.accel)], ["share", "on"], ["seal", "on"]]),
    "-display", "none",
    "-msg", "timestamp=on",
    // Kept when jailed, though there QEMU writes its namespace pid (1, which readPidFile ignores) and the daemon
    // reads the helper's jail.pid instead: one argv for both modes, and VIGIL_JAIL=off needs it (recover() finds
    // a QEMU whose start was cut short before its pid was recorded).
    "-pidfile", paths.pidFile,
    "-chardev", opts("socket", [["id", "qmp"], ["path", paths.qmpSocket], ["server", "on"], ["wait", "off"]]),
    "-mon", "chardev=qmp,mode=control",
    // A recording's UARTs are FIFOs, not sockets: a write that fails for want of buffer space makes QEMU retry from
    // the host's event loop, unrecorded, and the replay diverges (src/host/fifo.ts). A replay's writes are taken
    // from the log, so its sockets are fine.
    "-chardev", plan.rr?.mode === "record"
      ? opts("pipe", [["id", "serial0"], ["path", paths.serialPipe], ["logfile", paths.consoleLog], ["logappend", "on"]])
      : opts("socket", [["id", "serial0"], ["path", paths.serialSocket], ["server", "on"], ["wait", "off"], ["logfile", paths.consoleLog], ["logappend", "on"]]),
    "-serial", "chardev:serial0",
    "-device", opts("vmgenid", [["id", "vmgenid0"], ["guid", plan.vmgenid]]),
  ];

  if (plan.rr && spec.agent) {
    const agent = plan.rr.mode === "record" ? opts("pipe", [["id", "agent0"], ["path", paths.agentPipe]]) : opts("socket", [["id", "agent0"], ["path", paths.agentSocket], ["server", "on"], ["wait", "off"]]);
    argv.push("-chardev", agent, "-serial", "chardev:agent0");
  }
  const channels = plan.rr
    ? []
    : [
        ...(spec.agent ? [{ id: "agent0", name: "org.vigil.agent.0", socket: paths.agentSocket }] : []),
        ...(spec.vtime ? [{ id: "vtime0", name: "org.vigil.vtime.0", socket: paths.vtimeSocket }] : []),
      ];
  if (channels.length > 0) {
    argv.push("-device", "virtio-serial-pci,id=vser0");
    for (const ch of channels) {
      argv.push(
        "-chardev", opts("socket", [["id", ch.id], ["path", ch.socket], ["server", "on"], ["wait", "off"]]),
        "-device", opts("virtserialport", [["bus", "vser0.0"], ["chardev", ch.id], ["name", ch.name]]),
      );
    }
  }

  if (spec.boot.kind === "kernel") {
    const cmdline = plan.rr && spec.agent ? `${spec.boot.cmdline} ${RR_AGENT_CMDLINE}` : spec.boot.cmdline;
    argv.push("-kernel", spec.boot.kernel, "-initrd", spec.boot.initrd, "-append", cmdline);
  }

  spec.disks.forEach((disk, i) => {
    const file = plan.diskFiles[disk.name];
    if (file === undefined) throw new BugError(`no image file for disk "${disk.name}"`);
    const chain = plan.backing?.[disk.name];
    // Bottom layer first, so each node exists before the one above names it as its backing.
    if (chain) {
      for (let k = chain.length - 1; k >= 0; k--) {
        const layer = chain[k]!;
        const node = `${disk.name}-b${k}`;
        if (layer.fd !== undefined) argv.push("-add-fd", opts(`fd=${layer.fd}`, [["set", layer.fd], ["opaque", layer.file]]));
        const filename = layer.fd !== undefined ? `/dev/fdset/${layer.fd}` : layer.file;
        argv.push("-blockdev", opts("driver=file", [["node-name", `${node}-file`], ["filename", filename], ["read-only", "on"]]));
        if (layer.format === "qcow2") argv.push("-blockdev", qcow2Node(node, `${node}-file`, true, k + 1 < chain.length ? `${disk.name}-b${k + 1}` : null));
        else argv.push("-blockdev", opts(`driver=${optValue(layer.format)}`, [["node-name", node], ["file", `${node}-file`], ["read-only", "on"]]));
      }
    }
    const top = chain
      ? qcow2Node(disk.name, `${disk.name}-file`, false, chain.length > 0 ? `${disk.name}-b0` : null)
      : opts("driver=qcow2", [["node-name", disk.name], ["file", `${disk.name}-file`]]);
    argv.push("-blockdev", opts("driver=file", [["node-name", `${disk.name}-file`], ["filename", file], ["discard", "unmap"]]), "-blockdev", top);
    // Under record/replay every request goes through blkreplay, between the image and the device.
    if (plan.rr) argv.push("-blockdev", opts("driver=blkreplay", [["node-name", `${disk.name}-rr`], ["image", disk.name]]));
    argv.push("-device", opts("virtio-blk-pci", [["id", `${disk.name}-dev`], ["drive", plan.rr ? `${disk.name}-rr` : disk.name], ["bootindex", spec.boot.kind === "disk" ? i : undefined]]));
  });

  for (const nic of spec.nics) {
    let netdev: string;
    if (plan.rr?.mode === "replay") netdev = opts("user", [["id", nic.name], ["restrict", "on"]]);
    else if (nic.mode === "user") netdev = opts("user", [["id", nic.name], ["restrict", nic.restrict ? "on" : "off"]]);
    else {
      const fd = plan.tapFds?.[nic.name];
      if (fd === undefined) throw new VigilError("VIGIL_INVALID_STATE", `Cannot run VM ${JSON.stringify(spec.name)}: NIC ${JSON.stringify(nic.name)} is on network ${JSON.stringify(nic.network)}, and ${BRIDGED_NEEDS_JAIL}`, { field: "nics" });
      // vhost=off: /dev/vhost-net is not in the jail, and QEMU may not open anything itself.
      netdev = opts("tap", [["id", nic.name], ["fd", fd], ["vhost", "off"]]);
    }
    // tx=timer under record/replay: QEMU 7.2 flushes a virtio-net TX queue from a bottom half scheduled on the host's
    // event loop — unrecorded, so the guest sees the ring change at another instruction in the replay and the
    // replay diverges (upstream made that bottom half a replayed event only after 7.2). The TX timer runs on the
    // virtual clock, which icount makes deterministic. Record and replay must build the same device.
    argv.push("-netdev", netdev, "-device", opts("virtio-net-pci", [["id", `${nic.name}-dev`], ["netdev", nic.name], ["mac", nic.mac], ["tx", plan.rr ? "timer" : undefined]]));
    if (plan.rr) argv.push("-object", opts("filter-replay", [["id", `${nic.name}-rr`], ["netdev", nic.name]]));
  }
  if (plan.incoming === "defer") argv.push("-incoming", "defer");
  return argv;
}
