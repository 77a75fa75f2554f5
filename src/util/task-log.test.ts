/** The task list: progress follows the running task, ends are once, finished ones newest first and bounded. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { ProgressBus } from "./progress.ts";
import { RECENT, TaskLog } from "./task-log.ts";

test("a task runs with its progress, ends once with its status, and the finished list keeps the last RECENT", () => {
  const bus = new ProgressBus();
  let clock = 0;
  const log = new TaskLog(bus, () => new Date(Date.UTC(2026, 11, 8) + clock));
  const end = log.begin({ requestId: "r1", actor: "ada", method: "POST", path: "/v1/vms/web/clone" });
  bus.emit({ requestId: "r1", what: "copy root", current: 40, total: 100 });
  bus.emit({ requestId: "other", what: "x", current: 1, total: 2 });
  assert.deepEqual(log.list(() => true).map((t) => [t.requestId, t.state, t.progress]), [["r1", "running", { what: "copy root", current: 40, total: 100 }]]);
  clock = 1500;
  end(201);
  end(500); // a second end changes nothing
  const [t1] = log.list(() => true);
  assert.deepEqual([t1!.state, t1!.status, t1!.durationMs], ["ok", 201, 1500]);
  const failed = log.begin({ requestId: "r2", actor: "bob", method: "DELETE", path: "/v1/vms/db" });
  failed(403);
  assert.deepEqual(log.list((t) => t.actor === "bob").map((t) => [t.requestId, t.state]), [["r2", "failed"]]);
  for (let i = 0; i < RECENT + 10; i++) log.begin({ requestId: `n${i}`, actor: "ada", method: "POST", path: "/x" })(200);
  const all = log.list(() => true);
  assert.equal(all.length, RECENT);
  assert.equal(all[0]!.requestId, `n${RECENT + 9}`, "newest first");
  log.close();
});
