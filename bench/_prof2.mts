import { openSqlite } from "../src/inventory/db.ts";
import { VmRepository } from "../src/vm/vm-repository.ts";
import { vmSummary } from "../src/vm/vm-view.ts";
const db = await openSqlite("/tmp/prof/db.sqlite");
const repo = new VmRepository(db);
const ts: number[] = [];
for (let r = 0; r < 60; r++) {
  const t = performance.now();
  const s = JSON.stringify((await repo.listShared()).map((v) => vmSummary(v)));
  ts.push(performance.now() - t);
  if (r === 30) await db.updateTable("vms").set({ state: "running" }).where("name", "=", "vm00001").execute();
}
console.log(ts.map((x) => x.toFixed(1)).join(" "));
