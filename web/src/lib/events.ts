/**
 * The live audit stream (/v1/events, server-sent events, same origin): one EventSource per page that wants it.
 * The daemon sends only records the user may read, and `overflow` when the page fell too far behind (then the
 * page refetches what it shows). The cluster manager's stream carries cluster events instead (`cluster`: a VM
 * created or changed through it, hosts, migrations), each of which makes the page refetch as an overflow does.
 */
import { useEffect, useRef } from "react";
import type { AuditRecord } from "./types.ts";

export function useAuditEvents(onRecord: (r: AuditRecord) => void, onOverflow?: () => void): void {
  const cb = useRef(onRecord);
  const of = useRef(onOverflow);
  cb.current = onRecord;
  of.current = onOverflow;
  useEffect(() => {
    const es = new EventSource("/v1/events");
    es.addEventListener("audit", (e) => {
      try {
        cb.current(JSON.parse((e as MessageEvent<string>).data) as AuditRecord);
      } catch {
        // ignore a malformed event
      }
    });
    es.addEventListener("overflow", () => of.current?.());
    es.addEventListener("cluster", () => of.current?.());
    return () => es.close();
  }, []);
}

/** Calls `f` at most once per `ms`, at the end of a burst. */
export function debounce(f: () => void, ms: number): () => void {
  let t: ReturnType<typeof setTimeout> | undefined;
  return () => {
    if (t) clearTimeout(t);
    t = setTimeout(f, ms);
  };
}
