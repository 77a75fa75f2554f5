/**
 * Chooses the accelerator. KVM only when /dev/kvm opens *and* the CPU advertises vmx or svm: on hosts where
 * /dev/kvm exists without hardware virtualization (nested setups without vmx passed through), a KVM boot hangs
 * instead of failing, so the device node alone is not evidence. `VIGIL_ACCEL` overrides the choice.
 */
import { closeSync, openSync, readFileSync } from "node:fs";
import { VigilError, q } from "../errors.ts";
import type { Accelerator } from "./argv.ts";

export interface AccelChoice {
  accel: Accelerator;
  reason: string;
}

export function detectAccelerator(
  env: NodeJS.ProcessEnv = process.env,
  probe: { kvmOpens: () => boolean; cpuFlags: () => string } = { kvmOpens, cpuFlags },
): AccelChoice {
  const forced = env.VIGIL_ACCEL;
  if (forced !== undefined && forced !== "") {
    if (forced !== "kvm" && forced !== "tcg") {
      throw new VigilError("VIGIL_BAD_REQUEST", `Invalid VIGIL_ACCEL ${q(forced)}: allowed values are "kvm" and "tcg"`, { field: "VIGIL_ACCEL" });
    }
    return { accel: forced, reason: "set by VIGIL_ACCEL" };
  }
  if (!probe.kvmOpens()) return { accel: "tcg", reason: "/dev/kvm cannot be opened" };
  if (!/\b(vmx|svm)\b/.test(probe.cpuFlags())) return { accel: "tcg", reason: "/dev/kvm exists but the CPU shows no vmx/svm flag" };
  return { accel: "kvm", reason: "/dev/kvm opens and the CPU has hardware virtualization" };
}

function kvmOpens(): boolean {
  try {
    closeSync(openSync("/dev/kvm", "r+"));
    return true;
  } catch {
    return false;
  }
}

function cpuFlags(): string {
  try {
    const text = readFileSync("/proc/cpuinfo", "utf8");
    return text.split("\n").find((l) => l.startsWith("flags")) ?? "";
  } catch {
    return "";
  }
}
