export {
  type BzImageHeader,
  detectCompression,
  inspectKernel,
  type KernelCompression,
  KernelFormatError,
  type KernelInfo,
  parseBzImageHeader,
} from './bzimage';
export { type ExtractResult, extractVmlinux } from './extract';
