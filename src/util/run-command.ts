/**
 * Runs a host tool (qemu-img, ...) with arguments as an array (never a shell), a timeout and bounded output, and
 * turns a failure into a VigilError that says which tool failed and what it printed.
 */
import { execFile } from "node:child_process";
import { VigilError, q } from "../errors.ts";

export interface RunResult {
  stdout: string;
  stderr: string;
}

export function runCommand(
  file: string,
  args: readonly string[],
  options: { timeoutMs?: number; maxOutputBytes?: number; what?: string; input?: string | undefined } = {},
): Promise<RunResult> {
  const what = options.what ?? file;
  return new Promise((resolve, reject) => {
    const child = execFile(
      file,
      args,
      { timeout: options.timeoutMs ?? 120_000, maxBuffer: options.maxOutputBytes ?? 16 * 1024 * 1024, encoding: "utf8" },
      (err, stdout, stderr) => {
        if (!err) return resolve({ stdout, stderr });
        const e = err as NodeJS.ErrnoException & { killed?: boolean; code?: number | string };
        if (e.code === "ENOENT") {
          return reject(new VigilError("VIGIL_HOST", `Cannot run ${q(file)}: it is not installed (run set-up: npm start)`, { cause: err }));
        }
        const detail = (stderr || stdout || e.message).trim().split("\n").slice(-3).join(" | ");
        reject(new VigilError("VIGIL_HOST", `${what} failed${e.killed ? " (timed out)" : ""}: ${detail}`, { cause: err }));
      },
    );
    // A tool that reads its stdin (nft -f -) gets `input`; every other tool sees an empty, closed stdin.
    // A tool that exits without reading it (or fails early) closes the pipe: EPIPE here is not the failure to
    // report — the exit status is, in the callback above. Unhandled, it would crash the process.
    child.stdin?.on("error", () => undefined);
    child.stdin?.end(options.input ?? "");
  });
}
