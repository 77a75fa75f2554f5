/**
 * One VM, tabbed: summary, console, graphs, snapshots, generations, history (lineage and where it has been), data
 * (every file holding it, with purge), IDS and its audit trail. The action bar holds every control the CLI has
 * for a VM the user may do; the rest are not shown (and the API would refuse them anyway).
 */
import { useCallback, useEffect, useMemo, useState } from "react";
import { api, errorText, newRequestId } from "../lib/api.ts";
import type { Vm } from "../lib/types.ts";
import { navigate } from "../lib/router.ts";
import { may } from "../lib/permissions.ts";
import { debounce, useAuditEvents } from "../lib/events.ts";
import { useSession } from "../session.tsx";
import { Tabs, type TabDef } from "../components/Tabs.tsx";
import { StateBadge, VmBadges } from "../components/Badges.tsx";
import { ConfirmDialog, type ConfirmRequest } from "../components/Confirm.tsx";
import { ProgressBar, useProgress } from "../components/Progress.tsx";
import { SummaryTab } from "./vm/SummaryTab.tsx";
import { ConsoleTab } from "./vm/ConsoleTab.tsx";
import { GraphsTab } from "./vm/GraphsTab.tsx";
import { SnapshotsTab } from "./vm/SnapshotsTab.tsx";
import { GenerationsTab } from "./vm/GenerationsTab.tsx";
import { HistoryTab } from "./vm/HistoryTab.tsx";
import { DataTab } from "./vm/DataTab.tsx";
import { IdsTab } from "./vm/IdsTab.tsx";
import { PostureTab } from "./vm/PostureTab.tsx";
import { RecordingsTab } from "./vm/RecordingsTab.tsx";
import { FirewallTab } from "./vm/FirewallTab.tsx";
import { CloneDialog } from "./vm/CloneDialog.tsx";
import { ExportDialog } from "./vm/ExportDialog.tsx";
import { RecordDialog } from "./vm/RecordDialog.tsx";
import { MigrateDialog } from "./vm/MigrateDialog.tsx";
import { ChownDialog } from "./vm/ChownDialog.tsx";
import { GuestTab } from "./vm/GuestTab.tsx";
import { TimeTab } from "./vm/TimeTab.tsx";
import { ErrorLine } from "../components/ErrorLine.tsx";

const RUNNING = new Set(["running", "paused", "starting"]);

export function VmPage({ name, tab }: { name: string; tab: string }) {
  const { session } = useSession();
  const [vm, setVm] = useState<Vm | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [confirm, setConfirm] = useState<ConfirmRequest | null>(null);
  const [pending, setPending] = useState<{ label: string; requestId: string } | null>(null);
  const [actionError, setActionError] = useState<string | null>(null);
  const [dialog, setDialog] = useState<"clone" | "export" | "record" | "migrate" | "chown" | null>(null);
  const progress = useProgress(pending?.requestId ?? null);

  const load = useCallback(() => {
    api<Vm>("GET", `/v1/vms/${name}`).then(
      (v) => {
        setVm(v);
        setError(null);
      },
      (err: unknown) => setError(errorText(err)),
    );
  }, [name]);
  useEffect(load, [load]);
  const refresh = useMemo(() => debounce(load, 250), [load]);
  useAuditEvents((r) => {
    if (r.target.kind === "vm" && (r.target.name === name || r.target.id === vm?.id)) refresh();
  }, refresh);

  if (error && !vm) {
    return (
      <main className="page">
        <p className="error" role="alert">
          {error}
        </p>
      </main>
    );
  }
  if (!vm) return <main className="page">Loading…</main>;

  const can = (p: string) => may(session, p, vm.owner);
  const act = (label: string, path: string, body?: unknown) => {
    const requestId = newRequestId();
    setPending({ label, requestId });
    setActionError(null);
    return api("POST", `/v1/vms/${vm.name}/${path}`, { requestId, ...(body !== undefined ? { body } : {}) })
      .then(load, (err: unknown) => {
        setActionError(`${label}: ${errorText(err)}`);
        throw err;
      })
      .finally(() => setPending(null));
  };
  const running = RUNNING.has(vm.state);
  // The cluster manager passes every request about the VM on to its host, bundles and recordings included (docs/web.md
  // "On a cluster"); only migration is its own.
  const onManager = session?.server === "manager";
  const tabs: TabDef[] = [
    { id: "summary", label: "Summary" },
    ...(can("vm.console") ? [{ id: "console", label: "Console" }] : []),
    ...(vm.spec.agent ? [{ id: "guest", label: "Guest" }] : []),
    { id: "graphs", label: "Graphs" },
    { id: "snapshots", label: "Snapshots" },
    { id: "generations", label: "Generations" },
    { id: "time", label: "Time and floor" },
    { id: "history", label: "History" },
    { id: "data", label: "Data" },
    ...(session?.can.includes("vm.introspect") ? [{ id: "ids", label: "IDS" }] : []),
    { id: "posture", label: "Posture" },
    ...(can("network.read") ? [{ id: "firewall", label: "Network" }] : []),
    { id: "recordings", label: "Recordings" },
  ];
  const current = tabs.some((t) => t.id === tab) ? tab : "summary";
  const select = (id: string) => navigate({ page: "vm", name: vm.name, tab: id });

  return (
    <main className="page vm-page">
      <div className="vm-title">
        <h1>{vm.name}</h1>
        <StateBadge state={vm.state} />
        <VmBadges vm={vm} />
      </div>
      <div className="actions" role="toolbar" aria-label="VM actions">
        {can("vm.control") && !running && (
          <button type="button" className="primary" disabled={!!pending} onClick={() => void act("Start", "start", { wait: true }).catch(() => undefined)}>
            Start
          </button>
        )}
        {can("vm.control") && !running && (
          <button type="button" disabled={!!pending} onClick={() => setDialog("record")}>
            Record…
          </button>
        )}
        {can("vm.control") && onManager && (
          <button type="button" disabled={!!pending} onClick={() => setDialog("migrate")}>
            Migrate…
          </button>
        )}
        {can("vm.control") && vm.state === "running" && (
          <button type="button" disabled={!!pending} onClick={() => void act("Pause", "pause").catch(() => undefined)}>
            Pause
          </button>
        )}
        {can("vm.control") && vm.state === "paused" && (
          <button type="button" disabled={!!pending} onClick={() => void act("Resume", "resume").catch(() => undefined)}>
            Resume
          </button>
        )}
        {can("vm.control") && running && (
          <>
            <button type="button" disabled={!!pending} onClick={() => setConfirm({ title: `Restart ${vm.name}?`, body: "The guest is stopped and started again in a fresh QEMU process.", action: "Restart", run: () => act("Restart", "restart", { wait: true }) })}>
              Restart
            </button>
            <button type="button" disabled={!!pending} onClick={() => setConfirm({ title: `Stop ${vm.name}?`, body: "ACPI power-off first; after 60 s QEMU is told to quit, then killed.", action: "Stop", run: () => act("Stop", "stop") })}>
              Stop
            </button>
            <button type="button" className="danger" disabled={!!pending} onClick={() => setConfirm({ title: `Kill ${vm.name}?`, body: "QEMU is killed at once: like pulling the power cable. Unwritten guest data is lost.", action: "Kill", danger: true, run: () => act("Kill", "kill") })}>
              Kill
            </button>
          </>
        )}
        {can("vm.export") && (
          <>
            <button type="button" onClick={() => setDialog("clone")}>
              Clone
            </button>
            <button type="button" onClick={() => setDialog("export")}>
              Export…
            </button>
          </>
        )}
        {can("vm.chown") && (
          <button type="button" onClick={() => setDialog("chown")}>
            Change owner…
          </button>
        )}
        {can("vm.modify") && !running && (
          <button
            type="button"
            disabled={!!pending}
            onClick={() =>
              setConfirm(
                vm.template
                  ? { title: `Thaw template ${vm.name}?`, body: "It becomes a VM that can start again; refused while linked clones depend on it.", action: "Thaw", run: () => act("Thaw", "template", { undo: true }) }
                  : { title: `Make ${vm.name} a template?`, body: "Its disks become read-only bases for linked clones; it can no longer start.", action: "Make template", run: () => act("Make template", "template", {}) },
              )
            }
          >
            {vm.template ? "Thaw template" : "Make template"}
          </button>
        )}
        {can("vm.delete") && !running && (
          <button
            type="button"
            className="danger"
            onClick={() =>
              setConfirm({
                title: `Destroy ${vm.name}?`,
                body: "The VM and its files are removed. Its audit trail stays.",
                action: "Destroy",
                danger: true,
                typeToConfirm: vm.name,
                run: async () => {
                  await api("DELETE", `/v1/vms/${vm.name}`);
                  navigate({ page: "inventory" });
                },
              })
            }
          >
            Destroy
          </button>
        )}
      </div>
      {pending && <ProgressBar p={progress} label={pending.label} />}
      <ErrorLine error={actionError} />
      <Tabs tabs={tabs} current={current} onSelect={select} />
      <div role="tabpanel" aria-labelledby={`tab-${current}`} className="tabpanel">
        {current === "summary" && <SummaryTab vm={vm} />}
        {current === "console" && <ConsoleTab vm={vm} />}
        {current === "guest" && <GuestTab vm={vm} canExec={can("vm.exec")} />}
        {current === "graphs" && <GraphsTab vm={vm} />}
        {current === "snapshots" && <SnapshotsTab vm={vm} canModify={can("vm.modify")} confirm={setConfirm} onChange={load} />}
        {current === "generations" && <GenerationsTab vm={vm} />}
        {current === "time" && <TimeTab vm={vm} canModify={can("vm.modify")} />}
        {current === "history" && <HistoryTab vm={vm} />}
        {current === "data" && <DataTab vm={vm} canPurge={can("vm.delete")} confirm={setConfirm} />}
        {current === "ids" && <IdsTab vm={vm} />}
        {current === "posture" && <PostureTab vm={vm} canScan={can("vm.control")} canQuarantine={can("vm.quarantine")} confirm={setConfirm} />}
        {current === "firewall" && <FirewallTab vm={vm} canChange={can("vm.firewall")} canManageNetwork={can("network.manage")} confirm={setConfirm} />}
        {current === "recordings" && <RecordingsTab vm={vm} canReplay={can("vm.console")} canBisect={can("vm.introspect")} canExport={can("vm.export")} canDelete={can("vm.delete")} confirm={setConfirm} />}
      </div>
      {confirm && <ConfirmDialog req={confirm} onClose={() => setConfirm(null)} />}
      {dialog === "clone" && (
        <CloneDialog
          vm={vm}
          onClose={() => setDialog(null)}
          onCloned={(clone) => {
            setDialog(null);
            navigate({ page: "vm", name: clone, tab: "summary" });
          }}
        />
      )}
      {dialog === "migrate" && <MigrateDialog vm={vm} canListHosts={may(session, "host.read")} onClose={() => setDialog(null)} onDone={load} />}
      {dialog === "chown" && <ChownDialog vm={vm} onClose={() => setDialog(null)} onDone={load} />}
      {dialog === "export" && <ExportDialog vm={vm} onClose={() => setDialog(null)} />}
      {dialog === "record" && <RecordDialog vm={vm} onClose={() => setDialog(null)} start={(o) => void act("Record", "record", o).catch(() => undefined)} />}
    </main>
  );
}
