import { test } from "node:test";
import assert from "node:assert/strict";
import { daemon } from "../cli/testing/cli-run.ts";
import { BUILTIN_IMAGES } from "./catalog.ts";

test("an import may not take a built-in image's name; nothing is stored", async (t) => {
  const { d } = await daemon(t);
  for (const name of BUILTIN_IMAGES) {
    const res = await d.app.request(`/v1/images?name=${name}&format=raw`, { method: "POST", headers: { "content-type": "application/octet-stream" }, body: Buffer.alloc(4096) }, { transport: "unix" });
    assert.equal(res.status, 409, name);
    const body = (await res.json()) as { error: { code: string; field?: string; message: string } };
    assert.equal(body.error.field, "name");
    assert.match(body.error.message, new RegExp(`Cannot import image "${name}": an image with that name exists`));
  }
  const listed = await d.app.request("/v1/images", {}, { transport: "unix" });
  assert.deepEqual(((await listed.json()) as { images: { kind: string }[] }).images.filter((i) => i.kind === "imported"), []);
});
