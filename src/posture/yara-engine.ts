/**
 * YARA-X, loaded from its Linux x64 build (@litko/yara-x-linux-x64-gnu, a Rust engine behind N-API). The package's
 * platform-neutral wrapper lists optional builds for other platforms that the registry does not have, which breaks
 * `npm ci` from our lock file; vigil runs on Debian x64 only, so it loads the one build it needs. The types below
 * are the part of the engine's API vigil uses, written from its documentation.
 */
import { createRequire } from "node:module";

export interface YaraMatch {
  ruleIdentifier: string;
  namespace: string;
  meta: Record<string, unknown>;
  tags: string[];
  matches: { offset: number; length: number; identifier: string }[];
}

export interface YaraRules {
  scan(data: Buffer): YaraMatch[];
  setMaxMatchesPerPattern(max: number): void;
}

export interface YaraCompileOptions {
  bannedModules?: { name: string; errorTitle: string; errorMessage: string }[];
  errorOnSlowPattern?: boolean;
}

interface YaraBinding {
  compile(source: string, options?: YaraCompileOptions): YaraRules;
}

const binding = createRequire(import.meta.url)("@litko/yara-x-linux-x64-gnu") as YaraBinding;

export const compileYara = (source: string, options: YaraCompileOptions): YaraRules => binding.compile(source, options);
