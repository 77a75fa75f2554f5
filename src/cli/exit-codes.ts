/**
 * The one place errors become CLI exit codes. Documented in the README; scripts may rely on them.
 */
import { CommanderError } from "commander";
import { ApiError } from "./client.ts";

export const EXIT = {
  ok: 0,
  internal: 1,
  badInput: 2,
  notFound: 3,
  conflict: 4,
  denied: 5,
  unreachable: 6,
  timeout: 7,
  backend: 8,
} as const;

export function exitCodeFor(code: string): number {
  switch (code) {
    case "VIGIL_BAD_REQUEST":
    case "VIGIL_INVALID_SPEC":
    case "VIGIL_UNSUPPORTED_MEDIA_TYPE":
    case "VIGIL_POLICY_DENIED":
      return EXIT.badInput;
    case "VIGIL_NOT_FOUND":
    case "VIGIL_VM_NOT_FOUND":
    case "VIGIL_IMAGE_NOT_FOUND":
    case "VIGIL_USER_NOT_FOUND":
      return EXIT.notFound;
    case "VIGIL_CONFLICT":
    case "VIGIL_VM_EXISTS":
    case "VIGIL_INVALID_STATE":
    case "VIGIL_BUSY":
      return EXIT.conflict;
    case "VIGIL_UNAUTHENTICATED":
    case "VIGIL_FORBIDDEN":
    case "VIGIL_CSRF":
      return EXIT.denied;
    case "VIGIL_UNREACHABLE":
      return EXIT.unreachable;
    case "VIGIL_TIMEOUT":
      return EXIT.timeout;
    case "VIGIL_QEMU":
    case "VIGIL_INTROSPECTION":
    case "VIGIL_GUEST_AGENT":
    case "VIGIL_HOST":
      return EXIT.backend;
    default:
      return EXIT.internal;
  }
}

/** Prints one line for a failure and returns its documented exit code. */
export function report(err: unknown): number {
  if (err instanceof CommanderError) return err.exitCode === 0 ? 0 : EXIT.badInput;
  if (err instanceof ApiError) {
    process.stderr.write(`vigil: ${err.message}\n`);
    return exitCodeFor(err.code);
  }
  const e = err as { code?: string; message?: string };
  if (typeof e.code === "string" && e.code.startsWith("VIGIL_")) {
    process.stderr.write(`vigil: ${e.message}\n`);
    return exitCodeFor(e.code);
  }
  process.stderr.write(`vigil: internal error: ${e.message ?? String(err)}\n`);
  return EXIT.internal;
}
