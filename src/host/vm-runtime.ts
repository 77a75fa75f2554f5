/**
 * A running VM as the host sees it: its QEMU pid, the long-lived QMP connection and (lazily) the guest agent
 * channel. It notices when QEMU goes away and says how: a clean shutdown (QEMU reported SHUTDOWN first, or vigil
 * itself asked it to go) or a crash (the process vanished without a word).
 */
import type { Logger } from "../log.ts";
import { QmpClient } from "../qemu/qmp-client.ts";
import { AgentClient } from "../guest-agent/agent-client.ts";
import type { VmLayout } from "../paths.ts";
import { processAlive, signal, waitForExit } from "./qemu-process.ts";

export type ExitReason = { kind: "shutdown"; reason: string } | { kind: "crashed"; detail: string };

export class VmRuntime {
  private agent: AgentClient | undefined;
  private agentConnecting: Promise<AgentClient> | undefined;
  private shutdownReason: string | undefined;
  private detached = false;
  /** Set by vigil before it stops or kills QEMU on purpose. */
  expectedExit: string | undefined;
  /**
   * The saved memory state this QEMU resumed instead of booting (set by whoever ran `snapshot-load`), so a
   * watcher does not mistake a restored, possibly compromised state for a fresh boot. Unknown after a reattach.
   */
  loadedState: string | undefined;
  /**
   * Set (before the runtime hooks run) for a QEMU started under `-icount rr=record`. Its execution is what a
   * recording replays: capabilities that would read it through HMP or pause it on their own schedule keep away and
   * look at the replays instead (docs/recording.md, "The live IDS and a recording VM").
   */
  recording = false;
  /** Resolves when QEMU has exited (never when vigil merely detaches). */
  readonly exited: Promise<ExitReason>;

  private constructor(
    readonly uuid: string,
    readonly pid: number,
    readonly qmp: QmpClient,
    readonly layout: VmLayout,
    private readonly log: Logger,
    childExit: Promise<unknown> | undefined,
  ) {
    qmp.onEvent((e) => {
      if (e.event === "SHUTDOWN") this.shutdownReason = typeof e.data.reason === "string" ? e.data.reason : "shutdown";
    });
    this.exited = new Promise((resolve) => {
      void qmp.closed.then(async () => {
        if (this.detached) return;
        // QMP closing is the first sign; the process may still be tearing down. Our own child is reaped by
        // Node, a reattached one by init: either way wait until the pid is really gone.
        if (childExit) await Promise.race([childExit, waitForExit(pid, 15_000)]);
        else await waitForExit(pid, 15_000);
        this.agent?.close();
        if (this.shutdownReason !== undefined) resolve({ kind: "shutdown", reason: this.shutdownReason });
        else if (this.expectedExit !== undefined) resolve({ kind: "shutdown", reason: this.expectedExit });
        else resolve({ kind: "crashed", detail: "QEMU exited without a shutdown (killed or crashed)" });
      });
    });
  }

  /** Connects QMP to a QEMU that is already running (freshly started or found again after a restart). */
  static async attach(uuid: string, pid: number, layout: VmLayout, log: Logger, childExit?: Promise<unknown>): Promise<VmRuntime> {
    const qmp = await QmpClient.connect(layout.qmpSocket, { timeoutMs: 10_000 });
    return new VmRuntime(uuid, pid, qmp, layout, log.child({ vm: uuid }), childExit);
  }

  get alive(): boolean {
    return this.qmp.isOpen && processAlive(this.pid);
  }

  /** The guest agent channel, connected on first use and reconnected after it dropped. */
  async agentClient(): Promise<AgentClient> {
    if (this.agent?.isOpen) return this.agent;
    this.agentConnecting ??= AgentClient.connect(this.layout.agentSocket).then(
      (client) => {
        this.agent = client;
        this.agentConnecting = undefined;
        return client;
      },
      (err: unknown) => {
        this.agentConnecting = undefined;
        throw err;
      },
    );
    return this.agentConnecting;
  }

  /** Status as QEMU reports it: "running", "paused", "prelaunch", ... */
  async status(): Promise<string> {
    const s = await this.qmp.execute<{ status: string }>("query-status");
    return s.status;
  }

  /** Sends SIGKILL and waits for the process to go. */
  async kill(reason: string): Promise<void> {
    this.expectedExit = reason;
    signal(this.pid, "SIGKILL");
    await this.exited;
  }

  /** Lets go of QEMU without stopping it (vigil is shutting down; the VM keeps running). */
  async detach(): Promise<void> {
    this.detached = true;
    this.agent?.close();
    await this.qmp.close();
    this.log.debug("detached");
  }
}
