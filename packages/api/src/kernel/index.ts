export {
  type BzImageHeader,
  detectCompression,
  inspectKernel,
  type KernelCompression,
  KernelFormatError,
  type KernelInfo,
  parseBzImageHeader,
} from './bzimage';
export { DECOMPRESSORS, type ExtractResult, extractVmlinux } from './extract';
