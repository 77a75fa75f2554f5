import { test } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { IntrospectionError } from "./errors.ts";
import { IDT_ALIAS, decodeIdt, describeGate, deserializeGate, gateDifferences, readIdt, serializeGate, type IdtGate } from "./idt.ts";

function encode(g: Omit<IdtGate, "vector">): Buffer {
  const b = Buffer.alloc(16);
  b.writeUInt16LE(Number(g.handler & 0xffffn), 0);
  b.writeUInt16LE(g.selector, 2);
  b[4] = g.ist;
  b[5] = (g.present ? 0x80 : 0) | (g.dpl << 5) | g.type;
  b.writeUInt16LE(Number((g.handler >> 16n) & 0xffffn), 6);
  b.writeUInt32LE(Number(g.handler >> 32n), 8);
  return b;
}

const gate = fc.record({
  handler: fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }),
  selector: fc.integer({ min: 0, max: 0xffff }),
  ist: fc.integer({ min: 0, max: 7 }),
  type: fc.integer({ min: 0, max: 15 }),
  dpl: fc.integer({ min: 0, max: 3 }),
  present: fc.boolean(),
});

test("gates decode to what was encoded (the 64-bit handler is split in three)", () => {
  fc.assert(
    fc.property(fc.array(gate, { minLength: 1, maxLength: 256 }), (gates) => {
      const decoded = decodeIdt(Buffer.concat(gates.map(encode)));
      assert.deepEqual(
        decoded,
        gates.map((g, vector) => ({ vector, ...g })),
      );
      for (const d of decoded) assert.deepEqual(deserializeGate(JSON.parse(JSON.stringify(serializeGate(d)))), d);
    }),
  );
});

test("the page-fault gate of a real 6.12 kernel", () => {
  // Vector 14 as read from the guest: asm_exc_page_fault, selector 0x10, interrupt gate, DPL 0.
  const raw = Buffer.from("80121000008e2095ffffffff00000000", "hex");
  const [g] = decodeIdt(raw);
  assert.deepEqual(g, { vector: 0, handler: 0xffff_ffff_9520_1280n, selector: 0x10, ist: 0, type: 0xe, dpl: 0, present: true });
  assert.match(describeGate(g as IdtGate, "asm_exc_page_fault"), /handler asm_exc_page_fault, selector 0x10, ist 0, type 0xe, dpl 0/);
});

test("any bytes decode; at most 256 gates; a trailing partial gate is ignored", () => {
  fc.assert(fc.property(fc.uint8Array({ maxLength: 5000 }), (b) => assert.equal(decodeIdt(Buffer.from(b)).length, Math.min(256, Math.floor(b.length / 16)))));
});

test("readIdt reads through an address space and validates the limit", () => {
  const table = Buffer.concat(Array.from({ length: 256 }, (_, v) => encode({ handler: 0xffff_ffff_8100_0000n + BigInt(v), selector: 0x10, ist: 0, type: 0xe, dpl: 0, present: true })));
  const space = { read: (a: bigint, n: number) => (a === IDT_ALIAS && n <= 4096 ? table.subarray(0, n) : undefined) };
  assert.equal(readIdt(space, IDT_ALIAS, 0xfff)?.length, 256);
  assert.equal(readIdt(space, IDT_ALIAS, 0xff)?.length, 16);
  assert.equal(readIdt(space, IDT_ALIAS + 16n, 0xfff), undefined);
  assert.throws(() => readIdt(space, IDT_ALIAS, 0x1000), IntrospectionError);
  assert.throws(() => readIdt(space, IDT_ALIAS, -1), IntrospectionError);
});

test("gateDifferences names every changed field; bad serialised gates are refused", () => {
  const a: IdtGate = { vector: 3, handler: 1n, selector: 0x10, ist: 0, type: 0xe, dpl: 3, present: true };
  assert.deepEqual(gateDifferences(a, a), []);
  assert.deepEqual(gateDifferences(a, { ...a, handler: 2n, dpl: 0, ist: 1, type: 0xf, selector: 0x33, present: false }), ["handler", "selector", "ist", "type", "dpl", "present"]);
  for (const bad of [{}, { ...serializeGate(a), dpl: 4 }, { ...serializeGate(a), handler: "12" }, { ...serializeGate(a), v: 256 }, null]) {
    assert.throws(() => deserializeGate(bad as never), IntrospectionError);
  }
});
