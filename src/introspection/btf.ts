/**
 * A bounded parser of BTF, the compact type information the kernel carries about itself (magic 0xeb9f). It is
 * how the engine learns struct layouts (`task_struct.tasks`, `mm_struct.pgd`) for the exact running build
 * without DWARF or a profile. The bytes come from guest memory (`__start_BTF`..`__stop_BTF`) or from a vmlinux
 * file's `.BTF` section, so every offset, count and type reference is checked, and every walk over the type
 * graph is bounded in depth and steps.
 */
import { IntrospectionError } from "./errors.ts";

export const BTF_MAGIC = 0xeb9f;

/** BTF kinds (include/uapi/linux/btf.h). */
export const BtfKind = {
  UNKN: 0,
  INT: 1,
  PTR: 2,
  ARRAY: 3,
  STRUCT: 4,
  UNION: 5,
  ENUM: 6,
  FWD: 7,
  TYPEDEF: 8,
  VOLATILE: 9,
  CONST: 10,
  RESTRICT: 11,
  FUNC: 12,
  FUNC_PROTO: 13,
  VAR: 14,
  DATASEC: 15,
  FLOAT: 16,
  DECL_TAG: 17,
  TYPE_TAG: 18,
  ENUM64: 19,
} as const;

export interface BtfLimits {
  /** Largest BTF blob accepted. Default 64 MiB (the 6.12 kernel's is 4.5 MiB). */
  maxBytes?: number;
  /** Most types accepted. Default 2,000,000. */
  maxTypes?: number;
}

/** One member of a struct or union, as stored. */
export interface BtfMember {
  /** Empty for an anonymous member. */
  readonly name: string;
  readonly type: number;
  /** Offset from the start of the containing struct, in bits. */
  readonly bitOffset: number;
  /** Width of a bitfield, in bits; 0 when the member is not a bitfield (or the kind_flag encoding is not used). */
  readonly bitfieldSize: number;
}

/** A member located inside a struct, possibly through anonymous structs/unions. */
export interface ResolvedMember extends BtfMember {
  /** Offset in bytes from the start of the outer struct (for a bitfield: of the byte holding its first bit). */
  readonly byteOffset: number;
  /** The anonymous members passed through on the way (their type ids), outermost first. */
  readonly via: readonly number[];
}

export interface BtfTypeInfo {
  readonly id: number;
  readonly kind: number;
  readonly name: string;
  readonly vlen: number;
  readonly kindFlag: boolean;
  /** size for INT/STRUCT/UNION/ENUM/DATASEC/FLOAT/ENUM64, referenced type id for the others. */
  readonly sizeOrType: number;
}

const HEADER_MIN = 24;
const MAX_DEPTH = 32;
/** Members visited in one lookup through anonymous members; shared sub-structs could otherwise blow up. */
const MAX_MEMBER_VISITS = 200_000;
const MAX_NAME = 1024;

function malformed(message: string): IntrospectionError {
  return new IntrospectionError("malformed", `Cannot parse BTF: ${message}`);
}

/** Bytes of kind-specific data after the 12-byte common header. */
function extraBytes(kind: number, vlen: number): number {
  switch (kind) {
    case BtfKind.INT:
      return 4;
    case BtfKind.ARRAY:
      return 12;
    case BtfKind.STRUCT:
    case BtfKind.UNION:
      return 12 * vlen;
    case BtfKind.ENUM:
      return 8 * vlen;
    case BtfKind.FUNC_PROTO:
      return 8 * vlen;
    case BtfKind.VAR:
      return 4;
    case BtfKind.DATASEC:
      return 12 * vlen;
    case BtfKind.DECL_TAG:
      return 4;
    case BtfKind.ENUM64:
      return 12 * vlen;
    case BtfKind.PTR:
    case BtfKind.FWD:
    case BtfKind.TYPEDEF:
    case BtfKind.VOLATILE:
    case BtfKind.CONST:
    case BtfKind.RESTRICT:
    case BtfKind.FUNC:
    case BtfKind.FLOAT:
    case BtfKind.TYPE_TAG:
      return 0;
    default:
      return -1;
  }
}

/** Parsed BTF: type records are indexed once; names are looked up lazily. */
export class Btf {
  /** Byte offset (within the type section) of each type; index = type id, 0 unused (void). */
  private readonly offsets: Uint32Array;
  private readonly byName = new Map<string, number[]>();
  readonly typeCount: number;

  private constructor(
    private readonly types: Buffer,
    private readonly strings: Buffer,
    offsets: Uint32Array,
    private readonly nameOffs: Uint32Array,
  ) {
    this.offsets = offsets;
    this.typeCount = offsets.length - 1;
  }

  /** Parses a BTF blob (header, type section, string section). Throws IntrospectionError if malformed. */
  static parse(buf: Buffer, limits: BtfLimits = {}): Btf {
    const maxBytes = limits.maxBytes ?? 64 * 1024 * 1024;
    const maxTypes = limits.maxTypes ?? 2_000_000;
    if (buf.length > maxBytes) throw malformed(`${buf.length} bytes (at most ${maxBytes})`);
    if (buf.length < HEADER_MIN) throw malformed(`${buf.length} bytes is shorter than the header`);
    const magic = buf.readUInt16LE(0);
    if (magic !== BTF_MAGIC) throw malformed(`magic 0x${magic.toString(16)} at byte offset 0 (expected 0xeb9f, little-endian)`);
    const version = buf[2];
    if (version !== 1) throw malformed(`version ${version} (only 1 is known)`);
    const hdrLen = buf.readUInt32LE(4);
    if (hdrLen < HEADER_MIN || hdrLen > buf.length) throw malformed(`header length ${hdrLen} at byte offset 4`);
    const typeOff = buf.readUInt32LE(8);
    const typeLen = buf.readUInt32LE(12);
    const strOff = buf.readUInt32LE(16);
    const strLen = buf.readUInt32LE(20);
    const body = buf.length - hdrLen;
    if (typeOff > body || typeLen > body - typeOff) throw malformed(`type section ${typeOff}+${typeLen} lies outside the ${body} data bytes`);
    if (strOff > body || strLen > body - strOff) throw malformed(`string section ${strOff}+${strLen} lies outside the ${body} data bytes`);
    if (typeLen % 4 !== 0) throw malformed(`type section length ${typeLen} is not a multiple of 4`);
    const types = buf.subarray(hdrLen + typeOff, hdrLen + typeOff + typeLen);
    const strings = buf.subarray(hdrLen + strOff, hdrLen + strOff + strLen);
    if (strLen === 0 || strings[0] !== 0 || strings[strLen - 1] !== 0) throw malformed("the string section must start and end with NUL");

    // One pass to index the records; each step consumes ≥ 12 bytes, so it ends within typeLen / 12 steps.
    const offs: number[] = [0];
    const names: number[] = [0];
    let pos = 0;
    while (pos < typeLen) {
      if (offs.length > maxTypes) throw malformed(`more than ${maxTypes} types`);
      if (pos + 12 > typeLen) throw malformed(`type ${offs.length} at type-section offset ${pos} is truncated`);
      const info = types.readUInt32LE(pos + 4);
      const kind = (info >>> 24) & 0x1f;
      const vlen = info & 0xffff;
      const extra = extraBytes(kind, vlen);
      if (extra < 0) throw malformed(`type ${offs.length} at type-section offset ${pos} has unknown kind ${kind}`);
      if (pos + 12 + extra > typeLen) throw malformed(`type ${offs.length} at type-section offset ${pos} runs past the type section`);
      const nameOff = types.readUInt32LE(pos);
      if (nameOff >= strLen) throw malformed(`type ${offs.length} name offset ${nameOff} is outside the string section`);
      offs.push(pos);
      names.push(nameOff);
      pos += 12 + extra;
    }
    return new Btf(types, strings, Uint32Array.from(offs), Uint32Array.from(names));
  }

  private str(off: number): string {
    if (off >= this.strings.length) throw malformed(`string offset ${off} is outside the string section`);
    const end = this.strings.indexOf(0, off);
    // The section ends with NUL, so end ≥ off; names longer than MAX_NAME are refused rather than trusted.
    if (end < 0 || end - off > MAX_NAME) throw malformed(`string at offset ${off} is longer than ${MAX_NAME} bytes`);
    return this.strings.toString("latin1", off, end);
  }

  /** The common header of type `id`; undefined for 0 (void) or an id out of range. */
  type(id: number): BtfTypeInfo | undefined {
    if (!Number.isInteger(id) || id <= 0 || id > this.typeCount) return undefined;
    const o = this.offsets[id] as number;
    const info = this.types.readUInt32LE(o + 4);
    return {
      id,
      kind: (info >>> 24) & 0x1f,
      name: this.str(this.types.readUInt32LE(o)),
      vlen: info & 0xffff,
      kindFlag: (info >>> 31) === 1,
      sizeOrType: this.types.readUInt32LE(o + 8),
    };
  }

  /** Members of a struct or union type (empty for other kinds). */
  members(id: number): BtfMember[] {
    const t = this.type(id);
    if (!t || (t.kind !== BtfKind.STRUCT && t.kind !== BtfKind.UNION)) return [];
    const base = (this.offsets[id] as number) + 12;
    const out: BtfMember[] = [];
    for (let i = 0; i < t.vlen; i++) {
      const o = base + i * 12;
      const off = this.types.readUInt32LE(o + 8);
      out.push({
        name: this.str(this.types.readUInt32LE(o)),
        type: this.types.readUInt32LE(o + 4),
        bitOffset: t.kindFlag ? off & 0xffffff : off,
        bitfieldSize: t.kindFlag ? off >>> 24 : 0,
      });
    }
    return out;
  }

  /**
   * Number of elements of an array type (typedefs and qualifiers skipped), or undefined when `id` is not an
   * array. Walkers use it for fixed-size arrays whose length the kernel build decides (`xa_node.slots`).
   */
  arrayLength(id: number): number | undefined {
    const r = this.resolve(id);
    const t = this.type(r);
    if (!t || t.kind !== BtfKind.ARRAY) return undefined;
    // ARRAY's 12 extra bytes: element type, index type, number of elements.
    return this.types.readUInt32LE((this.offsets[r] as number) + 12 + 8);
  }

  /** Ids of all types called `name`, optionally only of one kind. Scans the type records (≈1 ms), then caches. */
  findByName(name: string, kind?: number): number[] {
    let ids = this.byName.get(name);
    if (!ids) {
      ids = [];
      const key = Buffer.from(name, "latin1");
      const len = key.length;
      const first = key[0];
      const strs = this.strings;
      const nameOffs = this.nameOffs;
      if (len > 0 && len <= MAX_NAME) {
        for (let id = 1; id <= this.typeCount; id++) {
          const off = nameOffs[id] as number;
          // Cheap filters first: first byte and terminator position; the section ends with NUL (checked).
          if (strs[off] !== first || off + len >= strs.length || strs[off + len] !== 0) continue;
          if (strs.compare(key, 0, len, off, off + len) === 0) ids.push(id);
        }
      }
      if (this.byName.size > 10_000) this.byName.clear();
      this.byName.set(name, ids);
    }
    return kind === undefined ? [...ids] : ids.filter((id) => this.type(id)?.kind === kind);
  }

  /** Skips typedef / const / volatile / restrict / type_tag to the underlying type id (0 for void). */
  resolve(id: number): number {
    let cur = id;
    for (let depth = 0; depth < MAX_DEPTH; depth++) {
      const t = this.type(cur);
      if (!t) return cur === 0 ? 0 : -1;
      if (t.kind !== BtfKind.TYPEDEF && t.kind !== BtfKind.CONST && t.kind !== BtfKind.VOLATILE && t.kind !== BtfKind.RESTRICT && t.kind !== BtfKind.TYPE_TAG) return cur;
      cur = t.sizeOrType;
    }
    throw malformed(`type ${id} is a chain of more than ${MAX_DEPTH} typedefs/qualifiers (a loop?)`);
  }

  /**
   * The struct (or union) called `name`; with several, the first complete definition. A typedef of a struct
   * (`atomic_long_t`) also counts, as crash tools name types that way.
   */
  structId(name: string): number {
    const ids = [...this.findByName(name, BtfKind.STRUCT), ...this.findByName(name, BtfKind.UNION)];
    if (ids.length === 0) {
      for (const td of this.findByName(name, BtfKind.TYPEDEF)) {
        const r = this.resolve(td);
        const k = this.type(r)?.kind;
        if (k === BtfKind.STRUCT || k === BtfKind.UNION) ids.push(r);
      }
    }
    if (ids.length === 0) throw new IntrospectionError("not-found", `Cannot find struct ${JSON.stringify(name)} in BTF`);
    return ids.find((id) => (this.type(id)?.vlen ?? 0) > 0) ?? (ids[0] as number);
  }

  /** sizeof(struct name). */
  structSize(name: string): number {
    return (this.type(this.structId(name)) as BtfTypeInfo).sizeOrType;
  }

  /**
   * Finds `member` in struct `structName`, looking through anonymous struct/union members as C does. `member`
   * may be a dotted path through named nested structs ("se.vruntime"); each step may pass anonymous members.
   */
  member(structName: string, member: string): ResolvedMember {
    let typeId = this.structId(structName);
    const path = member.split(".");
    if (path.length > MAX_DEPTH || path.some((p) => p.length === 0)) throw new IntrospectionError("host-input", `Cannot look up member ${JSON.stringify(member)}: not a dotted member path`);
    let bits = 0;
    let found: ResolvedMember | undefined;
    const via: number[] = [];
    for (const [i, part] of path.entries()) {
      const hit = this.findMember(typeId, part, 0, { left: MAX_MEMBER_VISITS });
      if (!hit) throw new IntrospectionError("not-found", `Cannot find member ${JSON.stringify(path.slice(0, i + 1).join("."))} in struct ${JSON.stringify(structName)}`);
      bits += hit.bitOffset;
      via.push(...hit.via);
      found = { ...hit, bitOffset: bits, byteOffset: Math.floor(bits / 8), via: [...via] };
      if (i < path.length - 1) {
        typeId = this.resolve(hit.type);
        const t = this.type(typeId);
        if (!t || (t.kind !== BtfKind.STRUCT && t.kind !== BtfKind.UNION)) {
          throw new IntrospectionError("not-found", `Cannot look inside ${JSON.stringify(path.slice(0, i + 1).join("."))} of struct ${JSON.stringify(structName)}: it is not a struct or union`);
        }
      }
    }
    return found as ResolvedMember;
  }

  /** offsetof(struct structName, member) in bytes. */
  structMemberOffset(structName: string, member: string): number {
    return this.member(structName, member).byteOffset;
  }

  /** Direct members first, then a depth-first search through anonymous struct/union members. */
  private findMember(typeId: number, name: string, depth: number, budget: { left: number }): (BtfMember & { via: number[] }) | undefined {
    if (depth > MAX_DEPTH) throw malformed(`anonymous members nest deeper than ${MAX_DEPTH} (a loop?)`);
    const members = this.members(typeId);
    budget.left -= members.length;
    if (budget.left < 0) throw malformed(`looking up ${JSON.stringify(name)} visits more than ${MAX_MEMBER_VISITS} members`);
    for (const m of members) if (m.name === name) return { ...m, via: [] };
    for (const m of members) {
      if (m.name !== "") continue;
      const inner = this.resolve(m.type);
      const t = this.type(inner);
      if (!t || (t.kind !== BtfKind.STRUCT && t.kind !== BtfKind.UNION)) continue;
      const hit = this.findMember(inner, name, depth + 1, budget);
      if (hit) return { ...hit, bitOffset: m.bitOffset + hit.bitOffset, via: [inner, ...hit.via] };
    }
    return undefined;
  }
}
