export {
  type BuiltImage,
  blobOf,
  buildImage,
  buildImageFromEntries,
  buildIndex,
  compressLayer,
  descriptor,
  type ImageConfigInput,
  type ImageFormat,
  type LayerCompression,
  type LayerEntry,
  OCI_MEDIA_TYPES,
  type OciBlob,
  type Platform,
  sampleImage,
  tarLayer,
  zstdCompress,
} from './image';
export { basicAuthorization, type PushTarget, pushBlob, pushImage, pushIndex, pushManifest } from './push';
export { type RedirectProxy, startRedirectProxy } from './redirect-proxy';
export {
  freePort,
  type OciRegistry,
  REGISTRY_BINARY,
  type RegistryOptions,
  type RegistryTokenAuth,
  startOciRegistry,
} from './registry';
export {
  startTokenServer,
  type TokenRequestRecord,
  type TokenServer,
  type TokenServerOptions,
} from './token-server';
