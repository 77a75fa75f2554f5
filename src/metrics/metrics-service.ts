/**
 * The numbers behind the web console's graphs and `/metrics` (docs/web.md "Metrics"): per VM, whether it
 * runs, its QEMU's CPU seconds and resident memory (/proc), its configured memory, disk bytes read and written (QMP
 * query-blockstats, summed over the VM's block devices) and NIC bytes (the switch's per-tap counters); per host, VMs
 * by state, memory and load. One function gathers a VM's numbers for both the JSON route and the Prometheus text.
 *
 * Who sees what: VM series only for VMs the actor may read (as GET /v1/vms lists them); host series only with
 * host.read. An actor who may read no VM at all is refused as GET /v1/vms refuses it.
 */
import { can } from "../auth/permissions.ts";
import type { RequestContext } from "../auth/guard.ts";
import { readHostStats, readProcessStats } from "../host/proc-stats.ts";
import type { VmRuntime } from "../host/vm-runtime.ts";
import type { NicCounters } from "../network/counters.ts";
import { VM_STATES } from "../vm/state-machine.ts";
import type { VmService } from "../vm/vm-service.ts";
import type { VmView } from "../vm/vm-view.ts";
import { renderExposition, type MetricFamily, type Sample } from "./prometheus.ts";

export interface VmMetrics {
  /** When the numbers were read (ISO 8601). */
  at: string;
  running: boolean;
  cpuSeconds: number;
  rssBytes: number;
  memoryBytes: number;
  /** Null when QEMU could not be asked (not running, busy past the timeout, recording). */
  diskReadBytes: number | null;
  diskWrittenBytes: number | null;
  /** From the VM's side: bytes it received and sent on its plugged-in NICs; null without NICs or network.read. */
  netRxBytes: number | null;
  netTxBytes: number | null;
}

export interface MetricsDeps {
  vms: Pick<VmService, "list" | "lookup" | "describeVm" | "liveRuntime">;
  /** The switch's per-NIC counters (needs network.read; absent without a virtual network). */
  netCounters?: ((ctx: RequestContext, name: string) => Promise<NicCounters[]>) | undefined;
  hostName: string;
  procRoot?: string | undefined;
  /** How long a VM's QMP may take to answer query-blockstats before its disk numbers are left out. */
  qmpTimeoutMs?: number | undefined;
}

/** At most this many block devices are summed (a VM has a handful). */
const MAX_BLOCK_DEVICES = 256;

/** Sums rd_bytes and wr_bytes over query-blockstats' top-level entries; undefined for an answer of another shape. */
export function sumBlockstats(answer: unknown): { read: number; written: number } | undefined {
  if (!Array.isArray(answer) || answer.length > MAX_BLOCK_DEVICES) return undefined;
  let read = 0;
  let written = 0;
  for (const entry of answer as unknown[]) {
    const stats = (entry as { stats?: unknown } | null)?.stats as { rd_bytes?: unknown; wr_bytes?: unknown } | undefined;
    if (typeof stats !== "object" || stats === null) return undefined;
    const { rd_bytes: rd, wr_bytes: wr } = stats;
    if (typeof rd !== "number" || typeof wr !== "number" || !Number.isSafeInteger(rd) || !Number.isSafeInteger(wr) || rd < 0 || wr < 0) return undefined;
    read += rd;
    written += wr;
  }
  return { read, written };
}

export class MetricsService {
  constructor(private readonly d: MetricsDeps) {}

  /** One VM's numbers (vm.read; a VM the actor may not read is answered as missing). */
  async vm(ctx: RequestContext, name: string): Promise<VmMetrics> {
    const vm = this.d.vms.describeVm(await this.d.vms.lookup(ctx, name, "vm.metrics"));
    return this.measure(ctx, vm);
  }

  /** The Prometheus exposition for what `ctx` may see. */
  async exposition(ctx: RequestContext): Promise<string> {
    const views = await this.d.vms.list(ctx);
    const measured = await Promise.all(views.map(async (v) => ({ v, m: await this.measure(ctx, v) })));
    const host = this.d.hostName;
    const per = (pick: (m: VmMetrics) => number | null): Sample[] =>
      measured.flatMap(({ v, m }) => {
        const value = pick(m);
        return value === null ? [] : [{ labels: { vm: v.name, host }, value }];
      });
    const families: MetricFamily[] = [
      { name: "vigil_vm_running", help: "1 if the VM's guest is running, else 0.", type: "gauge", samples: per((m) => (m.running ? 1 : 0)) },
      { name: "vigil_vm_cpu_seconds_total", help: "CPU time of the VM's QEMU process (user + system), in seconds.", type: "counter", samples: per((m) => (m.running || m.cpuSeconds > 0 ? m.cpuSeconds : null)) },
      { name: "vigil_vm_memory_rss_bytes", help: "Resident memory of the VM's QEMU process, in bytes.", type: "gauge", samples: per((m) => (m.running || m.rssBytes > 0 ? m.rssBytes : null)) },
      { name: "vigil_vm_memory_configured_bytes", help: "Memory configured for the VM, in bytes.", type: "gauge", samples: per((m) => m.memoryBytes) },
      { name: "vigil_vm_disk_read_bytes_total", help: "Bytes read by the VM from its disks (QMP query-blockstats, summed over devices).", type: "counter", samples: per((m) => m.diskReadBytes) },
      { name: "vigil_vm_disk_written_bytes_total", help: "Bytes written by the VM to its disks (QMP query-blockstats, summed over devices).", type: "counter", samples: per((m) => m.diskWrittenBytes) },
      { name: "vigil_vm_net_rx_bytes_total", help: "Bytes the VM received on its plugged-in NICs.", type: "counter", samples: per((m) => m.netRxBytes) },
      { name: "vigil_vm_net_tx_bytes_total", help: "Bytes the VM sent on its plugged-in NICs.", type: "counter", samples: per((m) => m.netTxBytes) },
    ];
    if (can(ctx.actor, "host.read")) {
      // host.read holders read every VM (their role's vm.read is global), so `views` is the whole host here.
      const byState = new Map<string, number>(VM_STATES.map((s) => [s, 0]));
      for (const v of views) byState.set(v.state, (byState.get(v.state) ?? 0) + 1);
      const h = await readHostStats(this.d.procRoot);
      families.push(
        { name: "vigil_host_vms", help: "VMs of this host by state.", type: "gauge", samples: [...byState].map(([state, value]) => ({ labels: { host, state }, value })) },
        { name: "vigil_host_memory_total_bytes", help: "MemTotal of the host, in bytes.", type: "gauge", samples: [{ labels: { host }, value: h.memTotalBytes }] },
        { name: "vigil_host_memory_available_bytes", help: "MemAvailable of the host, in bytes.", type: "gauge", samples: [{ labels: { host }, value: h.memAvailableBytes }] },
        { name: "vigil_host_load1", help: "The host's 1-minute load average.", type: "gauge", samples: [{ labels: { host }, value: h.load1 }] },
      );
    }
    return renderExposition(families);
  }

  /** The numbers of one VM the caller has already been allowed to read. */
  private async measure(ctx: RequestContext, vm: VmView): Promise<VmMetrics> {
    const at = new Date().toISOString();
    const memoryBytes = vm.spec.memoryMiB * 1024 * 1024;
    const rt = this.d.vms.liveRuntime(vm.id);
    const base: VmMetrics = { at, running: vm.state === "running", cpuSeconds: 0, rssBytes: 0, memoryBytes, diskReadBytes: null, diskWrittenBytes: null, netRxBytes: null, netTxBytes: null };
    if (!rt) return base;
    const [proc, disk, net] = await Promise.all([
      readProcessStats(rt.pid, this.d.procRoot).catch(() => undefined),
      this.disk(rt),
      this.net(ctx, vm.name),
    ]);
    return { ...base, ...(proc ?? {}), diskReadBytes: disk?.read ?? null, diskWrittenBytes: disk?.written ?? null, netRxBytes: net?.rx ?? null, netTxBytes: net?.tx ?? null };
  }

  /** query-blockstats within the timeout; undefined (quietly) when QMP is busy, gone, or the VM is recording. */
  private async disk(rt: Pick<VmRuntime, "qmp" | "recording">): Promise<{ read: number; written: number } | undefined> {
    if (rt.recording || !rt.qmp.isOpen) return undefined;
    const timeoutMs = this.d.qmpTimeoutMs ?? 1000;
    let timer: NodeJS.Timeout | undefined;
    // The client's own timeout, and ours in case a command queued behind a slow one never gets to run.
    const late = new Promise<undefined>((resolve) => (timer = setTimeout(() => resolve(undefined), timeoutMs)));
    try {
      const answer = await Promise.race([rt.qmp.execute("query-blockstats", undefined, { timeoutMs }), late]);
      return answer === undefined ? undefined : sumBlockstats(answer);
    } catch {
      return undefined;
    } finally {
      clearTimeout(timer);
    }
  }

  /** The switch port's counters turned to the VM's side: what the port sent (tx) the VM received. */
  private async net(ctx: RequestContext, name: string): Promise<{ rx: number; tx: number } | undefined> {
    // Asked only of actors who may read counters: the refusal would otherwise be audited at every poll.
    if (!this.d.netCounters || !can(ctx.actor, "network.read")) return undefined;
    try {
      const nics = await this.d.netCounters(ctx, name);
      if (nics.length === 0) return undefined;
      return { rx: nics.reduce((s, n) => s + n.tx.bytes, 0), tx: nics.reduce((s, n) => s + n.rx.bytes, 0) };
    } catch {
      return undefined;
    }
  }
}
