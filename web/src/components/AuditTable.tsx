/** Audit records as a table; details folded. Text only: record fields are rendered, never interpreted. */
import type { AuditRecord } from "../lib/types.ts";
import { when } from "../lib/format.ts";

export function AuditTable({ records }: { records: AuditRecord[] }) {
  if (records.length === 0) return <p>No records.</p>;
  return (
    <table className="table audit">
      <TableHead columns={["#", "time", "actor", "action", "target", "result", "details"]} />
      <tbody>
        {records.map((r) => (
          <tr key={r.seq} className={`result-${r.result}`}>
            <td>{r.seq}</td>
            <td>{when(r.time)}</td>
            <td>{r.actor}</td>
            <td>{r.action}</td>
            <td>
              {r.target.kind} {r.target.name ?? r.target.id ?? ""}
            </td>
            <td>
              <span className={`badge ${r.result === "ok" ? "" : r.result === "denied" ? "alarm" : "warn"}`}>{r.result}</span>
            </td>
            <td>
              {r.details && Object.keys(r.details).length > 0 && (
                <details>
                  <summary>{Object.keys(r.details).slice(0, 3).join(", ")}</summary>
                  <pre className="json">{JSON.stringify(r.details, null, 2)}</pre>
                </details>
              )}
            </td>
          </tr>
        ))}
      </tbody>
    </table>
  );
}

/** A table's header row: one column header per name (an empty name for a column of buttons). */
export function TableHead({ columns }: { columns: string[] }) {
  return (
    <thead>
      <tr>
        {columns.map((c, i) => (
          <th key={i} scope="col">
            {c}
          </th>
        ))}
      </tr>
    </thead>
  );
}
