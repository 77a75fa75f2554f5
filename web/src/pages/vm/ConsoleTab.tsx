/**
 * The serial console, live: xterm.js on the daemon's console WebSocket (/v1/vms/NAME/console/ws, authenticated by
 * the session cookie, Origin-checked). Guest bytes are hostile input: xterm renders them, nothing evaluates them.
 * Copy takes the terminal's selection; paste sends the clipboard's text as typed input.
 */
import { useEffect, useRef, useState } from "react";
import { Terminal } from "@xterm/xterm";
import { FitAddon } from "@xterm/addon-fit";
import "@xterm/xterm/css/xterm.css";
import type { Vm } from "../../lib/types.ts";

type Status = "connecting" | "open" | "closed";

export function ConsoleTab({ vm }: { vm: Vm }) {
  const host = useRef<HTMLDivElement>(null);
  const term = useRef<Terminal | null>(null);
  const sock = useRef<WebSocket | null>(null);
  const [status, setStatus] = useState<Status>("connecting");
  const [generation, setGeneration] = useState(0);
  const running = vm.state === "running" || vm.state === "paused";

  useEffect(() => {
    if (!host.current || !running) return;
    const t = new Terminal({ convertEol: false, cursorBlink: true, fontSize: 14, scrollback: 5000, screenReaderMode: false });
    const fit = new FitAddon();
    t.loadAddon(fit);
    t.open(host.current);
    fit.fit();
    term.current = t;
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(`${proto}//${location.host}/v1/vms/${vm.name}/console/ws`);
    ws.binaryType = "arraybuffer";
    sock.current = ws;
    setStatus("connecting");
    ws.onopen = () => {
      setStatus("open");
      t.focus();
    };
    ws.onclose = () => setStatus("closed");
    ws.onmessage = (e: MessageEvent<ArrayBuffer | string>) => t.write(typeof e.data === "string" ? e.data : new Uint8Array(e.data));
    const enc = new TextEncoder();
    const input = t.onData((d) => {
      if (ws.readyState === WebSocket.OPEN) ws.send(enc.encode(d));
    });
    const onResize = () => fit.fit();
    window.addEventListener("resize", onResize);
    return () => {
      window.removeEventListener("resize", onResize);
      input.dispose();
      ws.close();
      t.dispose();
      term.current = null;
      sock.current = null;
    };
  }, [vm.name, running, generation]);

  if (!running) return <p>The VM is {vm.state}: start it to use its console.</p>;
  return (
    <div className="console">
      <div className="console-bar">
        <span className={`badge ${status === "open" ? "state-running" : "warn"}`} data-testid="console-status">
          {status}
        </span>
        <button type="button" onClick={() => void navigator.clipboard?.writeText(term.current?.getSelection() ?? "")}>
          Copy selection
        </button>
        <button
          type="button"
          onClick={() =>
            void navigator.clipboard?.readText().then((text) => {
              if (sock.current?.readyState === WebSocket.OPEN) sock.current.send(new TextEncoder().encode(text));
            })
          }
        >
          Paste
        </button>
        {status === "closed" && (
          <button type="button" onClick={() => setGeneration((g) => g + 1)}>
            Reconnect
          </button>
        )}
      </div>
      <div ref={host} className="terminal" data-testid="terminal" aria-label={`Serial console of ${vm.name}`} />
    </div>
  );
}
