/**
 * A bounded parser of deb822 / RFC822-style stanzas, the format of dpkg's database (/var/lib/dpkg/status), apt's
 * `Packages` indexes and `Release` files. The input is hostile (a guest's disk, a downloaded file): the size, the
 * number of stanzas, the fields per stanza and each value's length are bounded by the limits below, work is linear
 * in the input, and a malformed line is refused with a VigilError naming the source and the line.
 *
 * Decisions:
 * - Bytes are read as latin1 (one character per byte): field names and the values vigil uses (names, versions,
 *   architectures) are ASCII, so nothing can fail to decode, and limits count bytes.
 * - CR is refused: dpkg and apt write LF only, so a CR means a file edited elsewhere or crafted, and accepting it
 *   would make "1.0\r" a different version from "1.0" in one place and the same in another.
 * - A line of only spaces and tabs is refused (deb822(5): not allowed in values or between fields) rather than
 *   guessed to be a separator or an empty continuation; a line that is fully empty separates stanzas.
 * - Field names are case-insensitive (as in dpkg and apt); a field given twice in one stanza is refused.
 * - Comment lines (`#`) are not part of these formats and are refused like any other line without a colon.
 */
import { VigilError, q } from "../errors.ts";

export interface Deb822Limits {
  /** Total bytes. */
  maxBytes: number;
  maxStanzas: number;
  maxFieldsPerStanza: number;
  /** Bytes of one field's value, continuation lines included. */
  maxValueBytes: number;
}

/**
 * Defaults sized for the files vigil reads, with headroom: a full desktop's status is ~3 MiB with ~3 000 stanzas;
 * bookworm's largest index (main, amd64) is ~95 MiB with ~64 000 stanzas; `Conffiles`/`Description` values stay
 * far below 1 MiB.
 */
export const DEB822_LIMITS: Deb822Limits = { maxBytes: 128 << 20, maxStanzas: 200_000, maxFieldsPerStanza: 256, maxValueBytes: 1 << 20 };

export interface Field {
  /** The name as written. */
  name: string;
  /** The value: the first line trimmed; continuation lines joined with "\n", each without its leading blank. */
  value: string;
  /** 1-based line of the field's name. */
  line: number;
}

export interface Stanza {
  /** 1-based line where the stanza starts. */
  line: number;
  /** Fields by lower-cased name, in order of appearance. */
  fields: Map<string, Field>;
}

/** The value of a field (case-insensitive name), or undefined. */
export function fieldValue(s: Stanza, name: string): string | undefined {
  return s.fields.get(name.toLowerCase())?.value;
}

function fail(source: string, line: number, what: string): VigilError {
  return new VigilError("VIGIL_BAD_REQUEST", `Cannot parse ${source}, line ${line}: ${what}`, { field: `${source}:${line}` });
}

/** `line` from `from` without leading and trailing spaces and tabs (only those: 0xA0 is a byte like any other). */
function trimBlanks(line: string, from: number): string {
  let a = from;
  let b = line.length;
  while (a < b && (line.charCodeAt(a) === 32 || line.charCodeAt(a) === 9)) a++;
  while (b > a && (line.charCodeAt(b - 1) === 32 || line.charCodeAt(b - 1) === 9)) b--;
  return line.slice(a, b);
}

const FIELD_NAME = /^[!-9;-~][!-9;-~]*$/; // printable ASCII except space and colon (deb822(5))

/**
 * Parses every stanza of `input`. `source` names the file in messages (`status`, `bookworm-security Packages`).
 */
export function parseDeb822(input: Buffer | string, source: string, limits: Deb822Limits = DEB822_LIMITS): Stanza[] {
  const size = typeof input === "string" ? input.length : input.length;
  if (size > limits.maxBytes) throw new VigilError("VIGIL_BAD_REQUEST", `Cannot parse ${source}: ${size} bytes is more than the limit of ${limits.maxBytes}`, { field: source });
  const text = typeof input === "string" ? input : input.toString("latin1");
  const stanzas: Stanza[] = [];
  let current: Stanza | undefined;
  let last: Field | undefined;
  let lastBytes = 0;
  let lineNo = 0;
  let pos = 0;
  while (pos < text.length) {
    let nl = text.indexOf("\n", pos);
    if (nl < 0) nl = text.length;
    const line = text.slice(pos, nl);
    pos = nl + 1;
    lineNo++;
    if (line.includes("\r")) throw fail(source, lineNo, "a carriage return (CR) is not allowed; these files use LF line ends");
    if (line === "") {
      current = undefined;
      last = undefined;
      continue;
    }
    const c = line.charCodeAt(0);
    if (c === 32 || c === 9) {
      if (/^[ \t]+$/.test(line)) throw fail(source, lineNo, "a line of only spaces or tabs (an empty continuation line is written \" .\")");
      if (!last) throw fail(source, lineNo, "a continuation line (starting with a space) before any field");
      lastBytes += line.length;
      if (lastBytes > limits.maxValueBytes) throw fail(source, last.line, `field ${q(last.name)} is longer than ${limits.maxValueBytes} bytes`);
      last.value += `\n${line.slice(1)}`;
      continue;
    }
    const colon = line.indexOf(":");
    if (colon <= 0) throw fail(source, lineNo, `expected "Field: value", found ${q(line.slice(0, 60))}`);
    const name = line.slice(0, colon);
    if (!FIELD_NAME.test(name) || name.startsWith("-") || name.startsWith("#")) throw fail(source, lineNo, `invalid field name ${q(name.slice(0, 60))}`);
    if (!current) {
      if (stanzas.length >= limits.maxStanzas) throw fail(source, lineNo, `more than ${limits.maxStanzas} stanzas`);
      current = { line: lineNo, fields: new Map() };
      stanzas.push(current);
    }
    const key = name.toLowerCase();
    if (current.fields.has(key)) throw fail(source, lineNo, `field ${q(name)} appears twice in the stanza starting at line ${current.line}`);
    if (current.fields.size >= limits.maxFieldsPerStanza) throw fail(source, lineNo, `more than ${limits.maxFieldsPerStanza} fields in one stanza`);
    lastBytes = line.length - colon - 1;
    if (lastBytes > limits.maxValueBytes) throw fail(source, lineNo, `field ${q(name)} is longer than ${limits.maxValueBytes} bytes`);
    last = { name, value: trimBlanks(line, colon + 1), line: lineNo };
    current.fields.set(key, last);
  }
  return stanzas;
}
