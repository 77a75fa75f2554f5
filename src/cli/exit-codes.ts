/**
 * The one place errors become CLI exit codes. Documented in the README; scripts may rely on them.
 */
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
