/**
 * Debian package versions, parsed and ordered exactly as dpkg 1.21 does (lib/dpkg/parsehelp.c `parseversion`,
 * lib/dpkg/version.c `verrevcmp`), so that "is the installed version older than the security suite's" gives the
 * answer `dpkg --compare-versions` gives. The test compares thousands of pairs against dpkg itself.
 *
 * What must hold:
 * - `[epoch:]upstream[-revision]`: the epoch ends at the FIRST colon, the revision starts after the LAST hyphen.
 * - Ordering of each part: non-digit runs compare character by character with `~` before everything (even the end
 *   of the string), then the end, then letters (ASCII order), then every other character; digit runs compare as
 *   numbers of any length — as digit strings with leading zeros removed, never through `Number` (which would round
 *   `99999999999999999999` and `99999999999999999998` to the same double).
 * - Hostile input is bounded: a version longer than MAX_VERSION_LENGTH is refused before any work, and comparison
 *   is linear in the lengths.
 *
 * Two parse modes. dpkg refuses some versions (an error: empty, embedded spaces, a bad epoch, an empty revision) and
 * only warns about others (upstream not starting with a digit, characters outside `[A-Za-z0-9.+~-:]`). "strict"
 * (the default, used for everything read from a guest or an index) refuses both: a dpkg database or index holding
 * a version dpkg itself warns about is corrupt or crafted, and vigil reports it rather than ordering it. "dpkg"
 * accepts the warned-about ones and orders them as dpkg would (used to cross-check against dpkg).
 */
import { VigilError, q } from "../errors.ts";

/** Longest version accepted. Debian's longest real versions are under 100 characters. */
export const MAX_VERSION_LENGTH = 256;
/** dpkg stores the epoch in an int: larger ones are refused ("epoch in version is too big"). */
const INT_MAX_DIGITS = "2147483647";

export interface DebianVersion {
  epoch: number;
  upstream: string;
  /** "" when the version has no hyphen (a native package). */
  revision: string;
}

export type ParseMode = "strict" | "dpkg";

const BLANK = /[ \t]/;
const SPACE = /[ \t\n\v\f\r]/;

function bad(field: string, text: string, why: string): VigilError {
  return new VigilError("VIGIL_BAD_REQUEST", `Invalid Debian version ${q(text.length > 80 ? `${text.slice(0, 80)}…` : text)} in ${field}: ${why}`, { field });
}

/** Compares two non-negative decimal digit strings (no sign) by value, for any length. */
function compareDigitStrings(a: string, b: string): number {
  const x = a.replace(/^0+/, "");
  const y = b.replace(/^0+/, "");
  if (x.length !== y.length) return x.length < y.length ? -1 : 1;
  return x < y ? -1 : x > y ? 1 : 0;
}

/**
 * Parses a version the way dpkg does. Throws a VigilError naming `field` (e.g. `status line 12: Version`) and the
 * rule broken; in "strict" mode also for the versions dpkg only warns about.
 */
export function parseVersion(text: string, field = "version", mode: ParseMode = "strict"): DebianVersion {
  if (text.length > MAX_VERSION_LENGTH) throw bad(field, text, `longer than ${MAX_VERSION_LENGTH} characters`);
  // dpkg trims leading blanks and trailing white space, then refuses white space inside.
  let start = 0;
  while (start < text.length && BLANK.test(text[start]!)) start++;
  let end = start;
  while (end < text.length && !SPACE.test(text[end]!)) end++;
  let rest = end;
  while (rest < text.length && SPACE.test(text[rest]!)) rest++;
  if (start === text.length) throw bad(field, text, "the version string is empty");
  if (rest < text.length) throw bad(field, text, "the version string has embedded spaces");
  let s = text.slice(start, end);

  let epoch = 0;
  const colon = s.indexOf(":");
  if (colon >= 0) {
    // dpkg reads the epoch with strtol: an optional sign, then digits, which must end exactly at the colon.
    const m = /^([+-]?)([0-9]+)/.exec(s);
    if (!m) throw bad(field, text, "the epoch is empty");
    if (m[0].length !== colon) throw bad(field, text, "the epoch is not a number");
    if (mode === "strict" && m[1] !== "") throw bad(field, text, "the epoch must be digits only");
    const digits = m[2]!;
    const zero = /^0+$/.test(digits);
    if (m[1] === "-" && !zero) throw bad(field, text, "the epoch is negative");
    if (compareDigitStrings(digits, INT_MAX_DIGITS) > 0) throw bad(field, text, `the epoch is larger than ${INT_MAX_DIGITS}`);
    epoch = zero ? 0 : Number(digits.replace(/^0+/, ""));
    s = s.slice(colon + 1);
    if (s === "") throw bad(field, text, "nothing follows the epoch's colon");
  }
  let upstream = s;
  let revision = "";
  const hyphen = s.lastIndexOf("-");
  if (hyphen >= 0) {
    upstream = s.slice(0, hyphen);
    revision = s.slice(hyphen + 1);
    if (revision === "") throw bad(field, text, "the revision after the last hyphen is empty");
  }
  if (upstream === "") throw bad(field, text, "the upstream version is empty");
  if (mode === "strict") {
    if (!/^[0-9]/.test(upstream)) throw bad(field, text, "the upstream version must start with a digit");
    if (!/^[A-Za-z0-9.+~:-]*$/.test(upstream)) throw bad(field, text, "the upstream version may hold only letters, digits and . + ~ - :");
    if (!/^[A-Za-z0-9.+~]*$/.test(revision)) throw bad(field, text, "the revision may hold only letters, digits and . + ~");
  }
  return { epoch, upstream, revision };
}

const isDigit = (c: number): boolean => c >= 48 && c <= 57;
const isAlpha = (c: number): boolean => (c >= 65 && c <= 90) || (c >= 97 && c <= 122);

/**
 * dpkg's `order()`: the weight of one character in a non-digit run. `c` is a UTF-16 unit; the parsers hand in
 * byte-per-character (latin1) strings, where a byte ≥ 0x80 is a negative C `char` on amd64 and weighs its byte value.
 */
function order(c: number): number {
  if (Number.isNaN(c) || isDigit(c)) return 0; // NaN: past the end, like C's NUL
  if (isAlpha(c)) return c;
  if (c === 126) return -1; // ~
  return c >= 128 ? c : c + 256;
}

/** dpkg's `verrevcmp` over one part (upstream or revision): negative, zero or positive. Linear in the lengths. */
export function compareFragment(a: string, b: string): number {
  let i = 0;
  let j = 0;
  while (i < a.length || j < b.length) {
    while ((i < a.length && !isDigit(a.charCodeAt(i))) || (j < b.length && !isDigit(b.charCodeAt(j)))) {
      const ac = order(a.charCodeAt(i));
      const bc = order(b.charCodeAt(j));
      if (ac !== bc) return ac - bc;
      i++;
      j++;
    }
    while (a.charCodeAt(i) === 48) i++;
    while (b.charCodeAt(j) === 48) j++;
    let firstDiff = 0;
    while (isDigit(a.charCodeAt(i)) && isDigit(b.charCodeAt(j))) {
      if (firstDiff === 0) firstDiff = a.charCodeAt(i) - b.charCodeAt(j);
      i++;
      j++;
    }
    if (isDigit(a.charCodeAt(i))) return 1;
    if (isDigit(b.charCodeAt(j))) return -1;
    if (firstDiff !== 0) return firstDiff;
  }
  return 0;
}

/** Orders two parsed versions: -1, 0 or 1 (epoch, then upstream, then revision). */
export function compareVersions(a: DebianVersion, b: DebianVersion): -1 | 0 | 1 {
  if (a.epoch !== b.epoch) return a.epoch < b.epoch ? -1 : 1;
  const u = compareFragment(a.upstream, b.upstream);
  if (u !== 0) return u < 0 ? -1 : 1;
  const r = compareFragment(a.revision, b.revision);
  return r < 0 ? -1 : r > 0 ? 1 : 0;
}

/** Parses (strictly) and orders two version strings. */
export function compareVersionStrings(a: string, b: string, mode: ParseMode = "strict"): -1 | 0 | 1 {
  return compareVersions(parseVersion(a, "version", mode), parseVersion(b, "version", mode));
}

/** The canonical text of a version (the epoch only when non-zero, as dpkg prints it). */
export function formatVersion(v: DebianVersion): string {
  return `${v.epoch !== 0 ? `${v.epoch}:` : ""}${v.upstream}${v.revision !== "" ? `-${v.revision}` : ""}`;
}
