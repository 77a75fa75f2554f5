/** How numbers and times read on the page. */

export function bytes(n: number | null | undefined): string {
  if (n === null || n === undefined || !Number.isFinite(n)) return "—";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let v = n;
  let i = 0;
  while (Math.abs(v) >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v < 10 && i > 0 ? v.toFixed(1) : Math.round(v)} ${units[i]}`;
}

export function when(iso: string | null | undefined): string {
  if (!iso) return "—";
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? iso : d.toLocaleString();
}

/** "in 3 d", "2 h ago": how far `iso` is from `now`. */
export function relative(iso: string, now = Date.now()): string {
  const ms = new Date(iso).getTime() - now;
  if (!Number.isFinite(ms)) return iso;
  const abs = Math.abs(ms);
  const [n, unit] = abs < 60_000 ? [Math.round(abs / 1000), "s"] : abs < 3_600_000 ? [Math.round(abs / 60_000), "min"] : abs < 86_400_000 ? [Math.round(abs / 3_600_000), "h"] : [Math.round(abs / 86_400_000), "d"];
  return ms >= 0 ? `in ${n} ${unit}` : `${n} ${unit} ago`;
}

/** Per-second rates between two counter samples (null when either is missing or the counter went back). */
export function rate(prev: number | null, next: number | null, seconds: number): number | null {
  if (prev === null || next === null || seconds <= 0 || next < prev) return null;
  return (next - prev) / seconds;
}
