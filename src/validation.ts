/**
 * Strict validation at every edge: one function turns a schema failure into a VigilError that names the field,
 * says what was wrong and what is allowed. Unknown fields are errors, never silently dropped.
 */
import type { z } from "zod";
import { VigilError, type ErrorCode, q } from "./errors.ts";

type Issue = z.core.$ZodIssue;

/** `disks.0.sizeMiB` style path of an issue. */
export function issuePath(path: readonly PropertyKey[]): string {
  return path.map((p) => String(p)).join(".");
}

function describe(issue: Issue, input: unknown): { field: string; text: string } {
  const field = issuePath(issue.path);
  switch (issue.code) {
    case "unrecognized_keys": {
      const key = issue.keys[0] ?? "?";
      const full = field ? `${field}.${key}` : key;
      return { field: full, text: `unknown field ${q(full)}` };
    }
    case "invalid_type": {
      const got = valueAt(input, issue.path);
      return {
        field,
        text: got === undefined ? `is required (${expectedName(issue.expected)})` : `must be ${expectedName(issue.expected)}, got ${typeName(got)}`,
      };
    }
    default:
      return { field, text: lowerFirst(issue.message) };
  }
}

function expectedName(expected: string): string {
  const names: Record<string, string> = { int: "an integer", number: "a number", string: "a string", boolean: "a boolean (true or false)", object: "an object", array: "an array" };
  return names[expected] ?? expected;
}

function valueAt(input: unknown, path: readonly PropertyKey[]): unknown {
  let v: unknown = input;
  for (const p of path) {
    if (typeof v !== "object" || v === null) return undefined;
    v = (v as Record<PropertyKey, unknown>)[p];
  }
  return v;
}

function typeName(v: unknown): string {
  if (v === null) return "null";
  if (Array.isArray(v)) return "an array";
  return typeof v === "object" ? "an object" : `${typeof v} ${JSON.stringify(v)}`;
}

function lowerFirst(s: string): string {
  return s.length > 0 ? s[0]!.toLowerCase() + s.slice(1) : s;
}

/** The VigilError for the first issue of a failed parse. */
export function zodIssueToError(error: z.ZodError, input: unknown, what: string, code: ErrorCode): VigilError {
  const issue = error.issues[0];
  if (!issue) return new VigilError(code, `Invalid ${what}`);
  const { field, text } = describe(issue, input);
  const where = field ? `${q(field)} ` : "";
  return new VigilError(code, `Invalid ${what}: ${where}${text}`, field ? { field } : {});
}

/**
 * Parses `input` with `schema` or throws a VigilError such as
 * `Invalid VM spec: "memoryMiB" must be at least 64` with `field: "memoryMiB"`.
 */
export function parseOrThrow<S extends z.ZodType>(
  schema: S,
  input: unknown,
  what: string,
  code: ErrorCode = "VIGIL_BAD_REQUEST",
): z.output<S> {
  const result = schema.safeParse(input);
  if (result.success) return result.data;
  throw zodIssueToError(result.error, input, what, code);
}
