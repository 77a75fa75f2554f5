/**
 * The introspection core's public surface: guest-physical memory access, page walks, VMCOREINFO, kallsyms, BTF,
 * ELF sections, and the kernel model that ties them together. Checks (IDT, syscall table, task lists, modules)
 * build on these. `synthetic-guest.ts` is test support and deliberately not exported.
 */
export { IntrospectionError, type IntrospectionReason } from "./errors.ts";
export {
  BufferPhysicalMemory,
  FilePhysicalMemory,
  MAX_READ_BYTES,
  PAGE_SIZE,
  parseMtreeFlat,
  pcRamRegions,
  ramRegionsFromMtree,
  validateRegions,
  type AddressSpace,
  type CacheStats,
  type FileMemoryOptions,
  type MtreeRange,
  type PhysicalMemory,
  type RamRegion,
} from "./physical-memory.ts";
export {
  VirtualMemory,
  describeNotMapped,
  isCanonical,
  la57FromCr4,
  parseControlRegisters,
  rootFromCr3,
  translate,
  type ControlRegisters,
  type Mapped,
  type NotMapped,
  type NotMappedReason,
  type PagingLevels,
  type PagingRoot,
  type Translation,
  type VirtualRead,
} from "./page-walk.ts";
export { candidateAt, kernelVersion, parseVmcoreinfo, scanVmcoreinfo, type ScanOptions, type VmcoreInfo, type VmcoreinfoCandidate, type VmcoreinfoScan } from "./vmcoreinfo.ts";
export {
  SymbolTable,
  carveKallsyms,
  checkKallsymsVersion,
  decodeKallsyms,
  kallsymsLayoutFromVmcoreinfo,
  type CarvedKallsyms,
  type DecodedKallsyms,
  type KallsymsChecks,
  type KallsymsLayout,
  type KallsymsLimits,
  type KernelSymbol,
} from "./kallsyms.ts";
export { BTF_MAGIC, Btf, BtfKind, type BtfLimits, type BtfMember, type BtfTypeInfo, type ResolvedMember } from "./btf.ts";
export { elfSectionFromBuffer, readElfSectionFromFile, readElfSections, type ElfSection } from "./elf.ts";
export {
  DEFAULT_LINK_TEXT,
  START_KERNEL_MAP,
  buildKernelModel,
  summarizeModel,
  type CachedBuild,
  type Disagreement,
  type KernelModel,
  type KernelModelCache,
  type KernelModelOptions,
  type KernelModelTimings,
} from "./kernel-model.ts";
