/**
 * The one logger: structured JSON lines (pino), a child per VM and per operation. Secrets never go into a log
 * field: tokens and keys are redacted by path as a second line of defence.
 */
import { pino, type Logger } from "pino";

export type { Logger };

/** Where the daemon logs: `VIGIL_LOG_LEVEL` sets the level (default info; "silent" for tests that want quiet). */
export function createLogger(options: { level?: string; destination?: number | string } = {}): Logger {
  const level = options.level ?? process.env.VIGIL_LOG_LEVEL ?? "info";
  const dest = pino.destination({ dest: options.destination ?? 2, sync: true });
  return pino(
    {
      level,
      base: { pid: process.pid },
      redact: { paths: ["token", "*.token", "authorization", "*.authorization", "privateKey", "*.privateKey"], censor: "[redacted]" },
      timestamp: pino.stdTimeFunctions.isoTime,
    },
    dest,
  );
}

/** A logger that drops everything, for unit tests and library use. */
export function silentLogger(): Logger {
  return pino({ level: "silent" });
}
