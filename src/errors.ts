/**
 * The error catalogue: every expected failure vigil reports has a stable code, an HTTP status and a message
 * written for the person who caused it. Errors become HTTP responses in one place (api/error-response.ts) and
 * CLI exit codes in one place (cli/exit-codes.ts). A `BugError` is only for broken invariants: it means vigil
 * itself is wrong, never the caller.
 */

/** Stable error codes with the HTTP status each maps to. Adding a code here is all it takes to use it. */
export const ERROR_STATUS = {
  VIGIL_BAD_REQUEST: 400,
  VIGIL_INVALID_SPEC: 400,
  VIGIL_UNAUTHENTICATED: 401,
  VIGIL_FORBIDDEN: 403,
  /** A request authenticated by the session cookie without the matching x-vigil-csrf header (docs/web.md). */
  VIGIL_CSRF: 403,
  VIGIL_NOT_FOUND: 404,
  VIGIL_VM_NOT_FOUND: 404,
  VIGIL_IMAGE_NOT_FOUND: 404,
  VIGIL_USER_NOT_FOUND: 404,
  VIGIL_CONFLICT: 409,
  VIGIL_VM_EXISTS: 409,
  VIGIL_INVALID_STATE: 409,
  VIGIL_BUSY: 409,
  VIGIL_UNSUPPORTED_MEDIA_TYPE: 415,
  VIGIL_POLICY_DENIED: 422,
  VIGIL_GUEST_AGENT: 502,
  VIGIL_QEMU: 502,
  VIGIL_INTROSPECTION: 502,
  VIGIL_TIMEOUT: 504,
  VIGIL_HOST: 500,
  VIGIL_INTERNAL: 500,
  /** A part of vigil that is not there (the web console not built). */
  VIGIL_UNAVAILABLE: 503,
} as const;

export type ErrorCode = keyof typeof ERROR_STATUS;

/** An expected failure: bad input, a missing object, an operation not allowed in the current state. */
export class VigilError extends Error {
  readonly code: ErrorCode;
  readonly status: number;
  /** The input field at fault, as a dotted path (`disks.0.sizeMiB`), when there is one. */
  readonly field: string | undefined;

  constructor(code: ErrorCode, message: string, options: { field?: string | undefined; cause?: unknown } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = "VigilError";
    this.code = code;
    this.status = ERROR_STATUS[code];
    this.field = options.field;
  }
}

/** A broken invariant inside vigil. Never thrown for anything a caller or a guest did. */
export class BugError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(`Bug in vigil: ${message}`, options);
    this.name = "BugError";
  }
}

/** Quote a user-supplied value for a message the way all vigil messages do. */
export function q(value: unknown): string {
  return JSON.stringify(String(value));
}

/** Words as a sentence list: `a`, `a or b`, `a, b or c` (with `conjunction` "or" or "and"). */
export function listWords(words: readonly string[], conjunction: "or" | "and"): string {
  if (words.length <= 1) return words.join("");
  return `${words.slice(0, -1).join(", ")} ${conjunction} ${words[words.length - 1]}`;
}

/** Short constructors for the errors raised in many places, so their wording stays one. */
export const errors = {
  vmNotFound: (name: string) => new VigilError("VIGIL_VM_NOT_FOUND", `VM ${q(name)} does not exist`),
  vmExists: (name: string) =>
    new VigilError("VIGIL_VM_EXISTS", `Cannot create VM ${q(name)}: a VM with that name exists`, { field: "name" }),
  invalidState: (action: string, name: string, state: string, allowed: readonly string[]) =>
    new VigilError(
      "VIGIL_INVALID_STATE",
      `Cannot ${action} VM ${q(name)}: it is ${state} (allowed when ${listWords(allowed, "or")})`,
    ),
  badRequest: (field: string, message: string) => new VigilError("VIGIL_BAD_REQUEST", message, { field }),
  timeout: (what: string, ms: number) => new VigilError("VIGIL_TIMEOUT", `Timed out after ${ms} ms waiting for ${what}`),
};

/** The message of anything thrown, for logs and wrapping; never a stack. */
export function messageOf(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
