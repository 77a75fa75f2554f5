/**
 * Live CPU, memory, disk and network graphs (uPlot), from GET /v1/vms/NAME/metrics every 2 s — the numbers
 * /metrics serves to Prometheus. Counters become per-second rates here; the last 5 minutes are kept.
 */
import { useEffect, useRef, useState } from "react";
import uPlot from "uplot";
import "uplot/dist/uPlot.min.css";
import { api, errorText } from "../../lib/api.ts";
import type { Vm, VmMetrics } from "../../lib/types.ts";
import { bytes, rate } from "../../lib/format.ts";
import { ErrorLine } from "../../components/ErrorLine.tsx";

const KEEP = 150;
const EVERY_MS = 2000;

interface Series {
  t: number[];
  cpu: (number | null)[];
  rss: (number | null)[];
  diskR: (number | null)[];
  diskW: (number | null)[];
  netRx: (number | null)[];
  netTx: (number | null)[];
}

function Chart({ title, t, series, unit }: { title: string; t: number[]; series: { label: string; values: (number | null)[] }[]; unit: (v: number) => string }) {
  const el = useRef<HTMLDivElement>(null);
  const plot = useRef<uPlot | null>(null);
  useEffect(() => {
    if (!el.current) return;
    const css = getComputedStyle(document.documentElement);
    const colors = [css.getPropertyValue("--accent").trim() || "#2563eb", css.getPropertyValue("--accent2").trim() || "#d97706"];
    plot.current = new uPlot(
      {
        title,
        width: Math.max(280, el.current.clientWidth),
        height: 160,
        series: [{}, ...series.map((s, i) => ({ label: s.label, stroke: colors[i % colors.length]!, width: 2, value: (_u: uPlot, v: number | null) => (v === null ? "—" : unit(v)) }))],
        axes: [{}, { values: (_u: uPlot, vals: number[]) => vals.map(unit), size: 70 }],
      },
      [[], ...series.map(() => [])],
      el.current,
    );
    return () => plot.current?.destroy();
    // The chart is built once (its series never change); data flows in through setData below.
  }, []);
  useEffect(() => {
    plot.current?.setData([t, ...series.map((s) => s.values)] as uPlot.AlignedData);
  });
  return <div ref={el} className="chart" role="img" aria-label={`${title}: ${series.map((s) => `${s.label} ${s.values.at(-1) == null ? "—" : unit(s.values.at(-1)!)}`).join(", ")}`} />;
}

export function GraphsTab({ vm }: { vm: Vm }) {
  const [s, setS] = useState<Series>({ t: [], cpu: [], rss: [], diskR: [], diskW: [], netRx: [], netTx: [] });
  const [error, setError] = useState<string | null>(null);
  const last = useRef<VmMetrics | null>(null);
  useEffect(() => {
    let stop = false;
    const tick = () => {
      api<VmMetrics>("GET", `/v1/vms/${vm.name}/metrics`).then(
        (m) => {
          if (stop) return;
          setError(null);
          const p = last.current;
          last.current = m;
          if (!p) return;
          const dt = (new Date(m.at).getTime() - new Date(p.at).getTime()) / 1000;
          const cpu = rate(p.cpuSeconds, m.cpuSeconds, dt);
          setS((o) => ({
            t: [...o.t, new Date(m.at).getTime() / 1000].slice(-KEEP),
            cpu: [...o.cpu, cpu === null ? null : cpu * 100].slice(-KEEP),
            rss: [...o.rss, m.rssBytes].slice(-KEEP),
            diskR: [...o.diskR, rate(p.diskReadBytes, m.diskReadBytes, dt)].slice(-KEEP),
            diskW: [...o.diskW, rate(p.diskWrittenBytes, m.diskWrittenBytes, dt)].slice(-KEEP),
            netRx: [...o.netRx, rate(p.netRxBytes, m.netRxBytes, dt)].slice(-KEEP),
            netTx: [...o.netTx, rate(p.netTxBytes, m.netTxBytes, dt)].slice(-KEEP),
          }));
        },
        (err: unknown) => !stop && setError(errorText(err)),
      );
    };
    tick();
    const id = setInterval(tick, EVERY_MS);
    return () => {
      stop = true;
      clearInterval(id);
    };
  }, [vm.name]);
  return (
    <div className="graphs">
      <ErrorLine error={error} />
      <Chart title="CPU (% of one core)" t={s.t} series={[{ label: "QEMU", values: s.cpu }]} unit={(v) => `${v.toFixed(0)} %`} />
      <Chart title="Memory (resident)" t={s.t} series={[{ label: "RSS", values: s.rss }]} unit={bytes} />
      <Chart title="Disk" t={s.t} series={[{ label: "read/s", values: s.diskR }, { label: "written/s", values: s.diskW }]} unit={(v) => `${bytes(v)}/s`} />
      <Chart title="Network" t={s.t} series={[{ label: "rx/s", values: s.netRx }, { label: "tx/s", values: s.netTx }]} unit={(v) => `${bytes(v)}/s`} />
    </div>
  );
}
