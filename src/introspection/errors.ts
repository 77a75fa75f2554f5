/**
 * The one error type of the introspection core. Guest memory is hostile input: every parser here either returns
 * a result or throws an `IntrospectionError` whose `reason` says what kind of failure it was and whose message
 * names the structure and the (guest) address or byte offset at fault. Anything else escaping a parser is a bug;
 * the fuzz tests hold each parser to that.
 */
import { VigilError } from "../errors.ts";

/** Why introspection could not proceed. */
export type IntrospectionReason =
  /** Guest bytes do not have the shape the parser needs (bad magic, lengths out of range, loops, ...). */
  | "malformed"
  /** A structure could not be found in guest memory (no VMCOREINFO, no kallsyms token table, ...). */
  | "not-found"
  /** The guest kernel uses a format this engine does not decode (e.g. kallsyms before Linux 6.2). */
  | "unsupported"
  /** A read outside guest RAM or through an unmapped virtual address where a mapping was required. */
  | "unreadable"
  /** A host-side input (RAM file, `info mtree` text, vmlinux file) is unusable. */
  | "host-input";

/** An expected introspection failure (502: the VM, behind QEMU, gave us something unusable). */
export class IntrospectionError extends VigilError {
  readonly reason: IntrospectionReason;

  constructor(reason: IntrospectionReason, message: string, options: { cause?: unknown } = {}) {
    super("VIGIL_INTROSPECTION", message, options);
    this.name = "IntrospectionError";
    this.reason = reason;
  }
}

/** Formats a guest address the way every introspection message shows it. */
export function hex(value: bigint | number): string {
  return "0x" + value.toString(16);
}
