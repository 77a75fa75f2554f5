/**
 * Runs an offline scan in a child process (scan-child.ts): the readers parse hostile images synchronously, so they
 * never run on the daemon's event loop, and a bug a hostile image finds ends in a killed child, not a hung daemon.
 * The child gets its request on stdin and answers one JSON document on stdout; both are bounded, and the child is
 * killed at the deadline.
 */
import { spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import { BugError, VigilError } from "../errors.ts";

/** The child's answer is a scan record (package lists, findings): generous, but bounded. */
const MAX_ANSWER_BYTES = 64 * 1024 * 1024;

/** The child script next to this module: `.ts` under tsx (tests), `.js` in the build. */
function childScript(): string {
  const self = fileURLToPath(import.meta.url);
  const m = /^(.*)scan-runner\.(ts|js)$/.exec(self);
  // Loaded from a bundle, this module would not know where its child is: say so rather than run something else.
  if (!m) throw new BugError(`scan-runner is loaded from ${self}, not from its own module file: cannot find scan-child`);
  return `${m[1]}scan-child.${m[2]}`;
}

export async function runScanChild<T>(request: unknown, timeoutMs: number): Promise<T> {
  const child = spawn(process.execPath, [...process.execArgv.filter((a) => !a.startsWith("--test")), childScript()], { stdio: ["pipe", "pipe", "pipe"] });
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  let outBytes = 0;
  let errBytes = 0;
  let killedFor: string | undefined;
  const kill = (why: string) => {
    killedFor ??= why;
    child.kill("SIGKILL");
  };
  const timer = setTimeout(() => kill(`it ran past its deadline of ${timeoutMs} ms`), timeoutMs);
  child.stdout.on("data", (b: Buffer) => {
    outBytes += b.length;
    if (outBytes > MAX_ANSWER_BYTES) kill(`its answer exceeded ${MAX_ANSWER_BYTES} bytes`);
    else out.push(b);
  });
  child.stderr.on("data", (b: Buffer) => {
    errBytes += b.length;
    if (errBytes <= 64 * 1024) err.push(b);
  });
  const exit = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve, reject) => {
    child.once("error", reject);
    child.once("close", (code, signal) => resolve({ code, signal }));
  });
  child.stdin.end(JSON.stringify(request));
  let r: { code: number | null; signal: NodeJS.Signals | null };
  try {
    r = await exit;
  } finally {
    clearTimeout(timer);
  }
  if (killedFor) throw new VigilError("VIGIL_TIMEOUT", `The scan was stopped: ${killedFor}`);
  let answer: { ok: true; result: T } | { ok: false; error: { code: string; message: string; field?: string } };
  try {
    answer = JSON.parse(Buffer.concat(out).toString("utf8")) as typeof answer;
  } catch {
    const tail = Buffer.concat(err).toString("utf8").trim().split("\n").slice(-3).join(" | ");
    throw new VigilError("VIGIL_INTERNAL", `The scan process ended without an answer (exit ${r.code ?? r.signal}): ${tail.slice(0, 500)}`);
  }
  if (!answer.ok) {
    const code = answer.error.code === "VIGIL_BAD_REQUEST" || answer.error.code === "VIGIL_NOT_FOUND" ? answer.error.code : "VIGIL_INTERNAL";
    throw new VigilError(code, answer.error.message, answer.error.field ? { field: answer.error.field } : {});
  }
  return answer.result;
}
