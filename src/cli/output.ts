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

/** `1 record`, `2 records`: a count and its noun, singular or plural. */
export function plural(n: number, noun: string, nouns = `${noun}s`): string {
  return `${n} ${n === 1 ? noun : nouns}`;
}

/** States in which a VM has a QEMU process; mirrors LIVE_STATES in vm/state-machine.ts (the CLI imports only its own folder). */
const LIVE_STATES: readonly string[] = ["starting", "running", "paused", "stopping"];

/**
 * The ACCEL cell of `vm list`: the accelerator of the QEMU that runs the VM now. A stopped VM keeps the one of
 * its last run in its record (and in --json), but the next start may choose another, so the table shows "-".
 */
export function accelCell(v: { state: string; accelerator?: unknown }): string | undefined {
  return LIVE_STATES.includes(v.state) && typeof v.accelerator === "string" ? v.accelerator : undefined;
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

/** What `vm start` says it did: `--wait` claims an answering agent only when there was one to wait for. */
export function startedMessage(v: { name: string; state: string; pid?: unknown; accelerator?: unknown; spec: { agent?: boolean } }, wait: boolean, paused: boolean): string {
  const where = `pid ${String(v.pid)}, ${String(v.accelerator)}`;
  if (!wait) return `VM ${v.name} is ${v.state} (${where})\n`;
  if (v.spec.agent === false) return `VM ${v.name} is ${v.state} (it has no guest agent to wait for), ${where}\n`;
  if (paused) return `VM ${v.name} is ${v.state} (started paused, so its agent was not waited for), ${where}\n`;
  return `VM ${v.name} is ${v.state} and its agent answers (${where})\n`;
}

/** Rows ordered by a numeric column (`pid`), numbers as numbers: 1, 2, 10, not 1, 10, 2. */
export function sortNumerically<T extends Record<string, unknown>>(rows: T[], key: string): T[] {
  const n = (r: T) => {
    const v = Number(r[key]);
    return Number.isFinite(v) ? v : Number.POSITIVE_INFINITY;
  };
  return [...rows].sort((a, b) => n(a) - n(b));
}

/**
 * Makes a guest's console output safe for the operator's terminal: every control character other than \n, \r
 * and \t becomes visible caret notation (ESC → `^[`, DEL → `^?`), so a hostile guest cannot send escape
 * sequences (cursor reports such as ESC[6n, title changes, OSC 52 clipboard writes) to the terminal. C1
 * controls (U+0080–U+009F, which some terminals obey like ESC [) are shown as `M-^X`.
 */
export function visibleControls(text: string): string {
  return text.replace(/[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]/g, (ch) => {
    const c = ch.charCodeAt(0);
    if (c === 0x7f) return "^?";
    if (c >= 0x80) return `M-^${String.fromCharCode(c - 0x80 + 0x40)}`;
    return `^${String.fromCharCode(c + 0x40)}`;
  });
}
