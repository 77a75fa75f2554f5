/**
 * CLI output: aligned tables for people, `--json` for scripts, and a spinner (on a terminal only) for waits.
 * Only the CLI writes to stdout; everything else logs through the logger.
 */
export function printJson(value: unknown): void {
  process.stdout.write(JSON.stringify(value, null, 2) + "\n");
}

export function table(rows: Array<Record<string, unknown>>, columns: Array<[key: string, header: string]>): string {
  const cell = (v: unknown) => (v === null || v === undefined ? "-" : typeof v === "object" ? JSON.stringify(v) : String(v));
  const widths = columns.map(([key, header]) => Math.max(header.length, ...rows.map((r) => cell(r[key]).length)));
  const line = (values: string[]) => values.map((v, i) => v.padEnd(widths[i]!)).join("  ").trimEnd();
  return [line(columns.map(([, h]) => h)), ...rows.map((r) => line(columns.map(([k]) => cell(r[k]))))].join("\n") + "\n";
}

export function printTable(rows: Array<Record<string, unknown>>, columns: Array<[string, string]>): void {
  process.stdout.write(table(rows, columns));
}

/** A spinner with elapsed seconds on stderr while `work` runs; silent when stderr is not a terminal. */
export async function withSpinner<T>(label: string, work: Promise<T>): Promise<T> {
  if (!process.stderr.isTTY) return work;
  const frames = ["⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏"];
  const start = Date.now();
  let i = 0;
  const timer = setInterval(() => {
    process.stderr.write(`\r${frames[i++ % frames.length]} ${label} ${((Date.now() - start) / 1000).toFixed(1)}s`);
  }, 100);
  try {
    return await work;
  } finally {
    clearInterval(timer);
    process.stderr.write("\r\x1b[K");
  }
}

/** A one-line progress bar on stderr (terminal only). */
export function progressLine(label: string, current: number, total: number): void {
  if (!process.stderr.isTTY || total <= 0) return;
  const width = 30;
  const frac = Math.max(0, Math.min(1, current / total));
  const bar = "█".repeat(Math.round(frac * width)).padEnd(width, "░");
  const amount = total > 1024 * 1024 ? `${(current / 1048576).toFixed(1)}/${(total / 1048576).toFixed(1)} MiB` : `${Math.round(frac * 100)}%`;
  process.stderr.write(`\r${label} ${bar} ${amount}\x1b[K`);
}

export function clearLine(): void {
  if (process.stderr.isTTY) process.stderr.write("\r\x1b[K");
}
