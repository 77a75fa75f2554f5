/**
 * The inventory: a tree (site → hosts → VMs; templates; images) beside a virtualised table of the VMs with state,
 * owner, expiry and alarm badges, a search box and filters. It refreshes when the audit stream says a VM changed.
 */
import { useCallback, useEffect, useMemo, useState } from "react";
import { api, errorText, newRequestId } from "../lib/api.ts";
import type { ClusterHost, Image, VmSummary } from "../lib/types.ts";
import { matchesFilter, sortVms, type VmFilter } from "../lib/filter.ts";
import { debounce, useAuditEvents } from "../lib/events.ts";
import { navigate } from "../lib/router.ts";
import { may } from "../lib/permissions.ts";
import { useSession } from "../session.tsx";
import { VirtualList } from "../components/VirtualList.tsx";
import { StateBadge, VmBadges } from "../components/Badges.tsx";
import { CreateVmDialog } from "./CreateVm.tsx";
import { ImportBundleDialog } from "./ImportBundle.tsx";
import { ErrorLine } from "../components/ErrorLine.tsx";

const STATES = ["running", "stopped", "paused", "starting", "stopping", "crashed", "incoming"];

export function Inventory({ host }: { host?: string }) {
  const { session } = useSession();
  const [vms, setVms] = useState<VmSummary[] | null>(null);
  const [images, setImages] = useState<Image[]>([]);
  const [error, setError] = useState<string | null>(null);
  const [filter, setFilter] = useState<VmFilter>({ text: "", state: "", host: host ?? "", badge: "" });
  const [sort, setSort] = useState<"name" | "state" | "owner" | "host" | "expiresAt">("name");
  const [creating, setCreating] = useState<"create" | "import" | null>(null);
  useEffect(() => setFilter((f) => ({ ...f, host: host ?? "" })), [host]);

  const load = useCallback(() => {
    api<{ vms: VmSummary[] }>("GET", "/v1/vms?view=summary").then(
      (r) => {
        setVms(r.vms);
        setError(null);
      },
      (err: unknown) => setError(errorText(err)),
    );
  }, []);
  useEffect(() => {
    load();
    if (may(session, "image.read")) api<{ images: Image[] }>("GET", "/v1/images").then((r) => setImages(r.images), () => undefined);
  }, [load, session]);
  const refresh = useMemo(() => debounce(load, 300), [load]);
  /** A VM created or imported from here: the list learns of it, and its page opens. */
  const opened = (name: string) => {
    setCreating(null);
    load();
    navigate({ page: "vm", name, tab: "summary" });
  };
  useAuditEvents((r) => {
    if (r.target.kind === "vm" || r.action.startsWith("vm.")) refresh();
  }, refresh);

  // On the cluster manager every host is in the tree (an empty or unreachable one too, with its state).
  const [clusterHosts, setClusterHosts] = useState<ClusterHost[]>([]);
  useEffect(() => {
    if (session?.server === "manager" && may(session, "host.read")) api<ClusterHost[]>("GET", "/v1/hosts").then(setClusterHosts, () => undefined);
  }, [session, vms]);
  const hosts = useMemo(() => [...new Set([...clusterHosts.map((h) => h.name), ...(vms ?? []).map((v) => v.host)])].sort(), [vms, clusterHosts]);
  const hostState = (name: string) => clusterHosts.find((h) => h.name === name)?.state;
  const shown = useMemo(() => sortVms((vms ?? []).filter((v) => !v.template && matchesFilter(v, filter)), sort), [vms, filter, sort]);
  const templates = useMemo(() => (vms ?? []).filter((v) => v.template), [vms]);

  return (
    <div className="inventory">
      <aside className="tree" aria-label="Inventory tree">
        <ul role="tree">
          <li role="treeitem" aria-expanded="true" aria-selected={!filter.host}>
            <button type="button" className="linklike" onClick={() => navigate({ page: "inventory" })}>
              Site <small>({(vms ?? []).length} VMs)</small>
            </button>
            <ul role="group">
              {hosts.map((h) => (
                <li role="treeitem" key={h} aria-selected={filter.host === h}>
                  <button type="button" className="linklike" onClick={() => navigate({ page: "inventory", host: h })}>
                    {h} <small>({(vms ?? []).filter((v) => v.host === h).length})</small>
                    {hostState(h) && hostState(h) !== "ready" && <span className="badge alarm">{hostState(h)}</span>}
                  </button>
                </li>
              ))}
            </ul>
          </li>
          <li role="treeitem" aria-expanded="true">
            Templates <small>({templates.length})</small>
            <ul role="group">
              {templates.map((t) => (
                <li role="treeitem" key={t.id}>
                  <a href={`/vms/${t.name}`} onClick={(e) => (e.preventDefault(), navigate({ page: "vm", name: t.name, tab: "summary" }))}>
                    {t.name}
                  </a>
                </li>
              ))}
            </ul>
          </li>
          <li role="treeitem" aria-expanded="true">
            Images <small>({images.length})</small>
            <ul role="group">
              {images.map((i) => (
                <li role="treeitem" key={i.name} title={i.description}>
                  {i.name} <small>{i.kind}</small>
                </li>
              ))}
            </ul>
          </li>
        </ul>
      </aside>
      <section className="vms" aria-labelledby="vms-title">
        <div className="toolbar">
          <h1 id="vms-title">{filter.host ? `VMs on ${filter.host}` : "Virtual machines"}</h1>
          <input type="search" placeholder="Search name, owner, purpose, label…" aria-label="Search VMs" value={filter.text} onChange={(e) => setFilter({ ...filter, text: e.target.value })} />
          <select aria-label="State" value={filter.state} onChange={(e) => setFilter({ ...filter, state: e.target.value })}>
            <option value="">any state</option>
            {STATES.map((s) => (
              <option key={s}>{s}</option>
            ))}
          </select>
          <select aria-label="Badges" value={filter.badge} onChange={(e) => setFilter({ ...filter, badge: e.target.value })}>
            <option value="">all</option>
            <option value="expired">expired</option>
            <option value="alarm">alarms</option>
          </select>
          {may(session, "vm.create") && (
            <>
              <button type="button" className="primary" onClick={() => setCreating("create")}>
                Create VM
              </button>
              <button type="button" onClick={() => setCreating("import")}>
                Import bundle…
              </button>
            </>
          )}
        </div>
        <ErrorLine error={error} />
        <div className="vm-head" role="row">
          {(["name", "state", "host", "owner", "expiresAt"] as const).map((k) => (
            <button key={k} type="button" role="columnheader" aria-sort={sort === k ? "ascending" : "none"} onClick={() => setSort(k)}>
              {k === "expiresAt" ? "badges" : k}
            </button>
          ))}
          <span role="columnheader">purpose</span>
        </div>
        {vms === null ? (
          <p>Loading…</p>
        ) : (
          <VirtualList
            items={shown}
            rowHeight={36}
            height="calc(100vh - 190px)"
            label={`${shown.length} VMs`}
            rowKey={(v) => v.id}
            row={(v) => (
              <a
                className="vm-row"
                href={`/vms/${v.name}`}
                data-testid={`vm-row-${v.name}`}
                onClick={(e) => {
                  e.preventDefault();
                  navigate({ page: "vm", name: v.name, tab: "summary" });
                }}
              >
                <span role="cell" className="name">
                  {v.name}
                </span>
                <span role="cell">
                  <StateBadge state={v.state} />
                </span>
                <span role="cell">{v.host}</span>
                <span role="cell">{v.owner}</span>
                <span role="cell">
                  <VmBadges vm={v} />
                </span>
                <span role="cell" className="purpose">
                  {v.purpose ?? ""}
                </span>
              </a>
            )}
          />
        )}
        <p className="count" aria-live="polite">
          {shown.length} of {(vms ?? []).filter((v) => !v.template).length} VMs
        </p>
      </section>
      {creating === "create" && <CreateVmDialog images={images} onClose={() => setCreating(null)} onCreated={opened} requestId={newRequestId} />}
      {creating === "import" && <ImportBundleDialog onClose={() => setCreating(null)} onImported={opened} {...(session?.server === "manager" ? { hosts: hosts.filter((h) => (hostState(h) ?? "ready") === "ready") } : {})} />}
    </div>
  );
}
