/**
 * The Prometheus text exposition format 0.0.4: `# HELP`, `# TYPE`, then `name{label="value",…} number` lines.
 * Label values are escaped as the format says (backslash, double quote, newline); HELP text escapes backslash and
 * newline. Names are vigil's own constants, checked against the format's grammar so a typo fails loudly.
 */
import { BugError } from "../errors.ts";

export const PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8";

export interface Sample {
  labels: Record<string, string>;
  value: number;
}

export interface MetricFamily {
  name: string;
  help: string;
  type: "gauge" | "counter";
  samples: Sample[];
}

const NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL = /^[a-zA-Z_][a-zA-Z0-9_]*$/;

/** A label value as the format writes it inside double quotes. */
export function escapeLabelValue(v: string): string {
  return v.replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\n/g, "\\n");
}

function escapeHelp(v: string): string {
  return v.replace(/\\/g, "\\\\").replace(/\n/g, "\\n");
}

function formatValue(v: number): string {
  if (Number.isNaN(v)) return "NaN";
  if (v === Infinity) return "+Inf";
  if (v === -Infinity) return "-Inf";
  return String(v);
}

/** The exposition of `families` (a family without samples is still described, so scrapers know it). */
export function renderExposition(families: readonly MetricFamily[]): string {
  const out: string[] = [];
  for (const f of families) {
    if (!NAME.test(f.name)) throw new BugError(`metric name ${JSON.stringify(f.name)} is not valid`);
    out.push(`# HELP ${f.name} ${escapeHelp(f.help)}`, `# TYPE ${f.name} ${f.type}`);
    for (const s of f.samples) {
      const labels = Object.entries(s.labels).map(([k, v]) => {
        if (!LABEL.test(k)) throw new BugError(`label name ${JSON.stringify(k)} is not valid`);
        return `${k}="${escapeLabelValue(v)}"`;
      });
      out.push(`${f.name}${labels.length > 0 ? `{${labels.join(",")}}` : ""} ${formatValue(s.value)}`);
    }
  }
  return out.join("\n") + "\n";
}

const MAX_LINE = 64 * 1024;
// dotAll: a label value may hold \r or U+2028, which the format does not escape.
const SAMPLE = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/s;
const LABEL_PAIR = /^([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(,|$)/s;

function unescapeLabelValue(v: string): string {
  return v.replace(/\\(.)/g, (_m, c: string) => (c === "n" ? "\n" : c));
}

function unescapeHelp(v: string): string {
  return v.replace(/\\(.)/g, (_m, c: string) => (c === "n" ? "\n" : c === "\\" ? "\\" : `\\${c}`));
}

function parseValue(v: string): number | undefined {
  if (v === "NaN") return NaN;
  if (v === "+Inf") return Infinity;
  if (v === "-Inf") return -Infinity;
  const n = Number(v);
  return v !== "" && Number.isFinite(n) ? n : undefined;
}

/**
 * Reads back what renderExposition writes (another vigil's `/metrics`, which the cluster manager merges): families in
 * order, each with its samples. Only the shape vigil writes is accepted — a sample must follow its family's
 * `# TYPE` line — and anything else is skipped and counted, so a peer's odd line costs that line, not the scrape.
 * Lines over 64 KiB are skipped unread; the caller bounds the text's size.
 */
export function parseExposition(text: string): { families: MetricFamily[]; skipped: number } {
  const families: MetricFamily[] = [];
  let help = new Map<string, string>();
  let current: MetricFamily | undefined;
  let skipped = 0;
  for (const line of text.split("\n")) {
    if (line === "") continue;
    if (line.startsWith("# HELP ")) {
      const rest = line.slice(7);
      const sp = rest.indexOf(" ");
      const name = sp < 0 ? rest : rest.slice(0, sp);
      if (!NAME.test(name)) skipped++;
      else help.set(name, sp < 0 ? "" : unescapeHelp(rest.slice(sp + 1)));
      continue;
    }
    if (line.startsWith("# TYPE ")) {
      const [name = "", type = ""] = line.slice(7).split(" ");
      if (!NAME.test(name) || (type !== "gauge" && type !== "counter")) {
        skipped++;
        current = undefined;
        continue;
      }
      current = { name, help: help.get(name) ?? "", type, samples: [] };
      families.push(current);
      help = new Map();
      continue;
    }
    if (line.startsWith("#")) continue;
    // vigil writes no sample line near this long; a longer one is skipped before any regex sees it.
    if (line.length > MAX_LINE) {
      skipped++;
      continue;
    }
    const m = SAMPLE.exec(line);
    const value = m ? parseValue(m[3]!) : undefined;
    const labels = m ? parseLabels(m[2] ?? "") : undefined;
    if (!m || !current || m[1] !== current.name || value === undefined || !labels) {
      skipped++;
      continue;
    }
    current.samples.push({ labels, value });
  }
  return { families, skipped };
}

function parseLabels(text: string): Record<string, string> | undefined {
  // Entries, then fromEntries: a peer's label called "__proto__" is a label like any other, never the prototype.
  const entries: [string, string][] = [];
  const seen = new Set<string>();
  let rest = text;
  while (rest !== "") {
    const m = LABEL_PAIR.exec(rest);
    if (!m || seen.has(m[1]!)) return undefined;
    seen.add(m[1]!);
    entries.push([m[1]!, unescapeLabelValue(m[2]!)]);
    rest = rest.slice(m[0].length);
    if (m[3] === "" && rest !== "") return undefined;
  }
  return Object.fromEntries(entries);
}

/**
 * Several expositions as one (the cluster manager's `/metrics`): a family's samples from every source under its
 * single HELP/TYPE (the format allows a family once), each sample labelled with its source's name in `label`
 * (replacing what the source wrote there: an agent knows its machine's hostname, the cluster knows the host's name).
 */
export function mergeExpositions(sources: readonly { name: string; families: readonly MetricFamily[] }[], label: string): MetricFamily[] {
  const byName = new Map<string, MetricFamily>();
  for (const s of sources) {
    for (const f of s.families) {
      let into = byName.get(f.name);
      if (!into) byName.set(f.name, (into = { name: f.name, help: f.help, type: f.type, samples: [] }));
      // A family two sources disagree about (gauge here, counter there) keeps the first one's type; the other's samples are dropped.
      if (into.type !== f.type) continue;
      for (const sample of f.samples) into.samples.push({ labels: { ...sample.labels, [label]: s.name }, value: sample.value });
    }
  }
  return [...byName.values()];
}
