/**
 * The introspection core's public surface: guest-physical memory access, page walks, VMCOREINFO, kallsyms, BTF,
 * ELF sections, and the kernel model that ties them together; and on top of them the sweep engine (sweep.ts),
 * Livewire-style integrity and cross-view checks against a baseline, with the walkers it is made of.
 * `testing/` (synthetic guest memory and kernel, the attacker's helpers, a live guest's console) is test
 * support and deliberately not exported. The IDS as a capability — watchers, watches, policies — is service.ts.
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
export {
  DEFAULT_CRITICAL_SYMBOLS,
  initialSweepState,
  stateLetter,
  sweep,
  takeBaseline,
  type Baseline,
  type BaselineOptions,
  type CheckId,
  type Evidence,
  type Finding,
  type GuestProcess,
  type ModuleSource,
  type PendingHidden,
  type ProcessSource,
  type Severity,
  type SweepCoverage,
  type SweepInput,
  type SweepOptions,
  type SweepReport,
  type SweepState,
  type TextPatchSummary,
  type VmiModule,
  type VmiProcess,
  type WalkName,
} from "./sweep.ts";
export { kernelLayout, describeAddress, namesAt, symbolExtent, type AddressRange, type KernelLayout } from "./kernel-layout.ts";
export { IDT_ALIAS, decodeIdt, readIdt, type IdtGate } from "./idt.ts";
export { readSyscallTable, syscallTableExtent } from "./syscall-table.ts";
export { PATCH_KINDS, type PatchKind } from "./patch-sites.ts";
export { checkPagePermissions, walkRange, type PermissionProblem, type PermissionRule } from "./page-permissions.ts";
export { isAttached, readTask, walkPidTable, walkTaskList, type VmiTask } from "./tasks.ts";
export { walkModuleKset, walkModuleList, type VmiModuleEntry } from "./modules.ts";
export { carve, type CarveResult, type CarveTargets } from "./carve.ts";
