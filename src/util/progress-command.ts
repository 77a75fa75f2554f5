/**
 * Runs a host tool that reports progress as "(NN.NN/100%)" (qemu-img -p) and forwards the percentage, so long
 * copies show a bar in the CLI and an event in the UI.
 */
import { spawn } from "node:child_process";
import { VigilError, q } from "../errors.ts";

export function spawnWithProgress(file: string, args: readonly string[], onPercent: (pct: number) => void): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(file, args, { stdio: ["ignore", "pipe", "pipe"] });
    let stderr = "";
    let last = -1;
    child.stdout.setEncoding("utf8");
    child.stdout.on("data", (chunk: string) => {
      for (const m of chunk.matchAll(/\((\d+(?:\.\d+)?)\/100%\)/g)) {
        const pct = Math.floor(Number(m[1]));
        if (pct !== last) onPercent((last = pct));
      }
    });
    child.stderr.on("data", (d: Buffer) => (stderr = (stderr + d.toString()).slice(-2000)));
    child.on("error", (err) => reject(new VigilError("VIGIL_HOST", `Cannot run ${q(file)}: ${err.message}`, { cause: err })));
    child.on("close", (code) => (code === 0 ? resolve() : reject(new VigilError("VIGIL_HOST", `${file} ${args[0] ?? ""} failed: ${stderr.trim().split("\n").slice(-2).join(" | ")}`))));
  });
}
