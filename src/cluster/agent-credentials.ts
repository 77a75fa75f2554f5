/**
 * An agent's credentials directory, as `vigil host add … --out DIR` writes it and `vigil agent --credentials DIR`
 * reads it: the vigil CA's certificate, the agent's certificate (`OU=agent, CN=<host name>`) and its key. The
 * directory is 0700 and the key 0600; an agent refuses a directory or key that others can read.
 */
import { chmodSync, mkdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { VigilError, messageOf, q } from "../errors.ts";
import { subjectOf } from "./ca.ts";
import type { CertBundle } from "./types.ts";

export const AGENT_FILES = { ca: "ca-cert.pem", cert: "agent-cert.pem", key: "agent-key.pem" } as const;

export function writeAgentCredentials(dir: string, bundle: CertBundle): void {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  chmodSync(dir, 0o700);
  writeFileSync(join(dir, AGENT_FILES.ca), bundle.caPem, { mode: 0o644 });
  writeFileSync(join(dir, AGENT_FILES.cert), bundle.certPem, { mode: 0o644 });
  writeFileSync(join(dir, AGENT_FILES.key), bundle.keyPem, { mode: 0o600 });
  chmodSync(join(dir, AGENT_FILES.key), 0o600);
}

/** The bundle and the host name its certificate carries. */
export function loadAgentCredentials(dir: string): { bundle: CertBundle; name: string } {
  const read = (f: string) => {
    try {
      return readFileSync(join(dir, f), "utf8");
    } catch (err) {
      throw new VigilError("VIGIL_BAD_REQUEST", `Cannot read the agent's credentials ${q(join(dir, f))}: ${messageOf(err)} (made by \`vigil host add NAME --addr IP:PORT --out DIR\` on the manager)`, { field: "credentials", cause: err });
    }
  };
  const bundle = { caPem: read(AGENT_FILES.ca), certPem: read(AGENT_FILES.cert), keyPem: read(AGENT_FILES.key) };
  for (const [path, what] of [[dir, "directory"], [join(dir, AGENT_FILES.key), "key"]] as const) {
    if ((statSync(path).mode & 0o077) !== 0) throw new VigilError("VIGIL_BAD_REQUEST", `The agent's credentials ${what} ${q(path)} is readable by others: chmod it ${what === "key" ? "0600" : "0700"}`, { field: "credentials" });
  }
  let subject: ReturnType<typeof subjectOf>;
  try {
    subject = subjectOf(bundle.certPem);
  } catch (err) {
    throw new VigilError("VIGIL_BAD_REQUEST", `The agent certificate in ${q(dir)} is not a vigil certificate: ${messageOf(err)}`, { field: "credentials", cause: err });
  }
  if (subject.role !== "agent") throw new VigilError("VIGIL_BAD_REQUEST", `The certificate in ${q(dir)} is OU=${subject.role}, not an agent's`, { field: "credentials" });
  return { bundle, name: subject.name };
}
