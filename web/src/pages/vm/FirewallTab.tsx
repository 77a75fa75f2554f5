/**
 * The VM's NICs and firewall policy (network.read): the rules with their text and installed notes, the defaults,
 * the quarantine state, what nftables holds for its taps. With vm.firewall: add a rule (`vigil fw add`), remove
 * one (`vigil fw remove VM INDEX`), set the default verdicts (`vigil fw default`). Each change is a new policy
 * version installed as one transaction; the daemon's answer (installed or why not) is shown.
 */
import { useCallback, useEffect, useState } from "react";
import { api, errorText } from "../../lib/api.ts";
import type { Vm } from "../../lib/types.ts";
import { ErrorLine } from "../../components/ErrorLine.tsx";
import { TableHead } from "../../components/AuditTable.tsx";
import type { ConfirmRequest } from "../../components/Confirm.tsx";
import { NicTraffic } from "./NicTraffic.tsx";

type Verdict = "accept" | "drop";
interface FirewallShow {
  version: number;
  policy: { defaults: { in: Verdict; out: Verdict } };
  rules: { index: number; text: string; note?: string }[];
  quarantine: { since: string; reason: string; actor: string } | null;
  installed: { family: string; chain: string; rules: string[] }[];
}
interface FwChange {
  version: number;
  summary: string;
  installed: boolean;
  reason?: string;
}

/** The rule the form describes, as the API takes it (fields left empty are left out). */
export function ruleFromForm(f: { direction: string; action: string; proto: string; ports: string; peerKind: string; peer: string; comment: string }): Record<string, unknown> {
  const rule: Record<string, unknown> = { direction: f.direction, action: f.action, proto: f.proto };
  if (f.ports.trim() && (f.proto === "tcp" || f.proto === "udp")) rule.ports = f.ports.trim();
  if (f.peerKind !== "any" && f.peer.trim()) rule.peer = { [f.peerKind]: f.peer.trim() };
  if (f.comment.trim()) rule.comment = f.comment.trim();
  return rule;
}

export function FirewallTab({ vm, canChange, canManageNetwork, confirm }: { vm: Vm; canChange: boolean; canManageNetwork: boolean; confirm: (r: ConfirmRequest) => void }) {
  const [fw, setFw] = useState<FirewallShow | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [outcome, setOutcome] = useState<string | null>(null);
  const [f, setF] = useState({ direction: "in", action: "accept", proto: "tcp", ports: "", peerKind: "any", peer: "", comment: "" });
  const load = useCallback(() => {
    api<FirewallShow>("GET", `/v1/vms/${vm.name}/firewall`).then(setFw, (err: unknown) => setError(errorText(err)));
  }, [vm.name]);
  useEffect(load, [load]);
  const change = (p: Promise<FwChange>) =>
    p.then(
      (c) => {
        setError(null);
        setOutcome(`version ${c.version}: ${c.summary}${c.installed ? " — installed" : ` — not installed${c.reason ? `: ${c.reason}` : ""}`}`);
        load();
      },
      (err: unknown) => setError(errorText(err)),
    );
  if (!fw) return error ? <ErrorLine error={error} /> : <p>Loading…</p>;
  const set = (k: keyof typeof f) => (e: { target: { value: string } }) => setF({ ...f, [k]: e.target.value });
  return (
    <div>
      <p>
        NICs: {vm.nics.length ? vm.nics.map((n) => `${n.name} on ${n.network} (${n.mac}${n.ip ? `, ${n.ip}` : ""})`).join("; ") : "user-mode only"}
      </p>
      {fw.quarantine && (
        <p className="badge alarm">
          quarantined since {fw.quarantine.since} by {fw.quarantine.actor}: {fw.quarantine.reason}
        </p>
      )}
      <ErrorLine error={error} />
      {outcome && <p role="status">{outcome}</p>}
      <h3>Policy version {fw.version}</h3>
      <div className="inline-form">
        {(["in", "out"] as const).map((dir) => (
          <label className="field" key={dir}>
            Default {dir === "in" ? "inbound" : "outbound"}
            <select value={fw.policy.defaults[dir]} disabled={!canChange} onChange={(e) => void change(api<FwChange>("PATCH", `/v1/vms/${vm.name}/firewall/defaults`, { body: { [dir]: e.target.value } }))}>
              <option value="accept">accept</option>
              <option value="drop">drop</option>
            </select>
          </label>
        ))}
      </div>
      {fw.rules.length === 0 ? (
        <p>No rules: only the defaults apply.</p>
      ) : (
        <table className="table" aria-label="Firewall rules">
          <TableHead columns={canChange ? ["#", "rule", "note", ""] : ["#", "rule", "note"]} />
          <tbody>
            {fw.rules.map((r) => (
              <tr key={r.index} data-testid={`fw-rule-${r.index}`}>
                <td>{r.index}</td>
                <td>
                  <code>{r.text}</code>
                </td>
                <td>{r.note ?? ""}</td>
                {canChange && (
                  <td>
                    <button type="button" className="danger" onClick={() => confirm({ title: `Remove rule ${r.index} of ${vm.name}?`, body: r.text, action: "Remove", danger: true, run: () => change(api<FwChange>("DELETE", `/v1/vms/${vm.name}/firewall/rules/${r.index}`)) })}>
                      Remove
                    </button>
                  </td>
                )}
              </tr>
            ))}
          </tbody>
        </table>
      )}
      {canChange && (
        <form
          className="inline-form"
          aria-label="Add a rule"
          onSubmit={(e) => {
            e.preventDefault();
            void change(api<FwChange>("POST", `/v1/vms/${vm.name}/firewall/rules`, { body: { rule: ruleFromForm(f) } }));
          }}
        >
          {(
            [
              ["Direction", "direction", ["in", "out"]],
              ["Action", "action", ["accept", "drop"]],
              ["Protocol", "proto", ["tcp", "udp", "icmp", "any"]],
            ] as const
          ).map(([label, key, choices]) => (
            <label className="field" key={key}>
              {label}
              <select value={f[key]} onChange={set(key)}>
                {choices.map((c) => (
                  <option key={c}>{c}</option>
                ))}
              </select>
            </label>
          ))}
          <label className="field">
            Ports
            <input value={f.ports} onChange={set("ports")} placeholder="22 or 8000-8080" disabled={f.proto !== "tcp" && f.proto !== "udp"} maxLength={11} />
          </label>
          <label className="field">
            Peer
            <select value={f.peerKind} onChange={set("peerKind")}>
              <option value="any">anyone</option>
              <option value="cidr">address or CIDR</option>
              <option value="vm">VM</option>
              <option value="label">VMs with label</option>
            </select>
          </label>
          {f.peerKind !== "any" && (
            <label className="field">
              {f.peerKind === "cidr" ? "Address or CIDR" : f.peerKind === "vm" ? "VM name" : "Label (k=v)"}
              <input value={f.peer} onChange={set("peer")} required maxLength={100} />
            </label>
          )}
          <label className="field">
            Comment
            <input value={f.comment} onChange={set("comment")} maxLength={200} />
          </label>
          <button type="submit" className="primary">
            Add rule
          </button>
        </form>
      )}
      <NicTraffic vm={vm} canManage={canManageNetwork} />
      <details>
        <summary>Installed in nftables on this host</summary>
        <pre className="json">{JSON.stringify(fw.installed, null, 2)}</pre>
      </details>
    </div>
  );
}
