/**
 * Domain errors and the catalogue of their codes. Business code throws an `NqvmError` with a code
 * and data; it never names an HTTP status. The HTTP edge (`http-errors.ts`, shared by the manager
 * and the agent) looks the status up here and answers the uniform body
 * `{"error": {"code", "message", "details"}}`. Codes are stable; messages are for humans and may
 * change.
 */

/** The statuses an error may answer with. */
export type ErrorStatus =
  | 400
  | 401
  | 403
  | 404
  | 405
  | 406
  | 408
  | 409
  | 411
  | 412
  | 413
  | 414
  | 415
  | 416
  | 422
  | 426
  | 429
  | 431
  | 500
  | 502
  | 503
  | 507;

export interface ErrorSpec {
  readonly status: ErrorStatus;
  /** The message when the thrower gives none: `{name}` is replaced by the data's `name`. */
  readonly message: string;
}

/**
 * Every error code a client can branch on: its HTTP status and its message template. A throw site
 * may pass a sentence of its own that says more; the code and its status never vary.
 */
export const ErrorCatalogue = {
  /** Input: `details.fields` lists the failing fields (path and reason) when there are any. */
  VALIDATION_FAILED: { status: 400, message: 'the request is not valid' },
  INVALID_JSON: { status: 400, message: 'the body is not valid JSON' },
  INVALID_CURSOR: { status: 400, message: 'the cursor is not one this list gave out' },
  SNAPSHOT_TYPE_UNSUPPORTED: { status: 400, message: 'this VMM does not take snapshots of that type' },
  SNAPSHOT_MISMATCH: { status: 400, message: 'the snapshot does not fit this VM' },
  EXEC_FAILED: { status: 400, message: 'the command could not be run' },
  /** Networks: the prefix overlaps loopback, 0/8, link-local, multicast or class E. */
  NETWORK_CIDR_RESERVED: { status: 400, message: 'the prefix {cidr} overlaps a reserved range' },
  IMAGE_PATH_OUTSIDE_ROOT: {
    status: 400,
    message: 'the path is outside the folders images may be read from',
  },
  /** URL imports: the URL's host is (or resolves to) an address imports may not fetch from. */
  URL_NOT_ALLOWED: { status: 400, message: 'imports may not fetch from this address' },
  UNAUTHENTICATED: { status: 401, message: 'authentication required' },
  INVALID_CREDENTIALS: { status: 401, message: 'wrong user name or password' },
  FORBIDDEN: { status: 403, message: 'your role does not allow this action' },
  CSRF_FAILED: { status: 403, message: 'the CSRF token or the origin does not match the session' },
  IMAGE_PATHS_DISABLED: { status: 403, message: 'imports from host paths are disabled' },
  /** No route has this method and path. */
  ROUTE_NOT_FOUND: { status: 404, message: 'no route {method} {path}' },
  NOT_FOUND: { status: 404, message: '{id} not found' },
  VM_NOT_FOUND: { status: 404, message: 'VM {id} not found' },
  HOST_NOT_FOUND: { status: 404, message: 'host {id} not found' },
  OPERATION_NOT_FOUND: { status: 404, message: 'operation {id} not found' },
  USER_NOT_FOUND: { status: 404, message: 'user {id} not found' },
  TOKEN_NOT_FOUND: { status: 404, message: 'token {id} not found' },
  IMAGE_NOT_FOUND: { status: 404, message: 'image {id} not found' },
  VOLUME_NOT_FOUND: { status: 404, message: 'volume {id} not found' },
  NETWORK_NOT_FOUND: { status: 404, message: 'network {id} not found' },
  PORT_FORWARD_NOT_FOUND: { status: 404, message: 'port forward {id} not found' },
  TEMPLATE_NOT_FOUND: { status: 404, message: 'template {id} not found' },
  SNAPSHOT_NOT_FOUND: { status: 404, message: 'snapshot {id} not found' },
  CONTAINER_NOT_FOUND: { status: 404, message: 'container {id} not found' },
  METHOD_NOT_ALLOWED: { status: 405, message: 'this route does not take that method' },
  /** The client's Accept header names no type this route answers with. */
  NOT_ACCEPTABLE: { status: 406, message: 'this route cannot answer in a type the request accepts' },
  REQUEST_TIMEOUT: { status: 408, message: 'the request did not arrive in time' },
  CONFLICT: { status: 409, message: 'the request conflicts with the current state' },
  NAME_TAKEN: { status: 409, message: 'the name {name} is taken' },
  VM_INVALID_STATE: { status: 409, message: 'the VM is not in a state that allows this' },
  OPERATION_NOT_CANCELLABLE: { status: 409, message: 'the operation cannot be cancelled' },
  HOST_NOT_EMPTY: { status: 409, message: 'the host still holds VMs' },
  LAST_ADMIN: { status: 409, message: 'the last admin cannot be removed or demoted' },
  IMAGE_NOT_READY: { status: 409, message: 'the image is not ready' },
  IMAGE_IN_USE: { status: 409, message: 'the image is in use' },
  VOLUME_IN_USE: { status: 409, message: 'the volume is in use' },
  NETWORK_IN_USE: { status: 409, message: 'the network is in use' },
  NETWORK_OVERLAP: { status: 409, message: 'the prefix overlaps another network' },
  ADDRESS_IN_USE: { status: 409, message: 'the address is in use' },
  ADDRESS_POOL_EXHAUSTED: { status: 409, message: 'the network has no free address left' },
  PORT_IN_USE: { status: 409, message: 'the port is in use' },
  SNAPSHOT_IN_USE: { status: 409, message: 'the snapshot is in use' },
  GUEST_AGENT_UNAVAILABLE: { status: 409, message: 'the guest agent does not answer' },
  SNAPSHOT_NOT_READY: { status: 409, message: 'the snapshot is not ready' },
  SNAPSHOT_UNSUPPORTED: { status: 409, message: 'this VM cannot be snapshotted' },
  /** No host the VM may run on can take it now: too little vCPU, memory or disk free (details.short), no VMM, no network. */
  NO_CAPACITY: { status: 409, message: 'no host can take this now' },
  /** The one host a VM may run on (where its snapshot's files or its volumes are) is cordoned, down or revoked. */
  PINNED_HOST_UNAVAILABLE: { status: 409, message: 'the one host this may run on is unavailable' },
  /** Containers: nqvm's container init (or the default kernel it boots with) is not registered. */
  CONTAINER_INIT_MISSING: { status: 409, message: "nqvm's container init is not registered" },
  /** The framework's own length check: the request has a body without a length. */
  LENGTH_REQUIRED: { status: 411, message: 'the request needs a Content-Length' },
  /** A conditional request (If-Match, If-Unmodified-Since) whose condition does not hold. */
  PRECONDITION_FAILED: { status: 412, message: 'the precondition of the request does not hold' },
  BODY_TOO_LARGE: { status: 413, message: 'request body is too large' },
  /** The URL, or one of its path segments, is too long. */
  URI_TOO_LONG: { status: 414, message: 'the request URL is too long' },
  UNSUPPORTED_MEDIA_TYPE: { status: 415, message: 'send JSON (Content-Type: application/json)' },
  RANGE_NOT_SATISFIABLE: { status: 416, message: 'the range is outside the content' },
  CHECKSUM_MISMATCH: { status: 422, message: 'the bytes do not have the checksum given' },
  /** Images: the bytes are not a kernel, initrd or root file system of the kind the import names. */
  IMAGE_INVALID: { status: 422, message: 'the bytes are not an image of the kind named' },
  /** Containers: the reference names no tag or repository the registry has. */
  REGISTRY_IMAGE_NOT_FOUND: { status: 422, message: 'the registry has no such image' },
  /** Containers: the registry refused the credentials (or wants some). */
  REGISTRY_AUTH_FAILED: { status: 422, message: 'the registry refused the credentials' },
  /** Containers: no linux/amd64 image, or a manifest format nqvm does not read (Docker v1). */
  IMAGE_UNSUPPORTED: { status: 422, message: 'the image has no form nqvm can run' },
  /** Containers: the image has no entrypoint or cmd and the request gave no command. */
  CONTAINER_COMMAND_MISSING: { status: 422, message: 'the image has no command and the request gave none' },
  /** Networks: no host reports the bridge or uplink the network names (or not of a usable kind). */
  NETWORK_INTERFACE_NOT_FOUND: { status: 422, message: 'no host has the interface the network names' },
  UPGRADE_REQUIRED: { status: 426, message: 'this route speaks WebSocket: send an upgrade request' },
  LOGIN_THROTTLED: { status: 429, message: 'too many failed logins; try again later' },
  HEADERS_TOO_LARGE: { status: 431, message: 'the request line and headers are too large (16 KiB at most)' },
  INTERNAL: { status: 500, message: 'internal error; the server log has details' },
  REGISTRY_UNREACHABLE: { status: 502, message: 'the registry does not answer' },
  /** The registry answered, but not usefully (5xx, rate limiting, a malformed document). */
  REGISTRY_ERROR: { status: 502, message: 'the registry answered with an error' },
  IMPORT_FAILED: { status: 502, message: 'the import failed' },
  SNAPSHOT_FAILED: { status: 502, message: 'the snapshot failed' },
  HOST_UNAVAILABLE: { status: 503, message: 'the host is unavailable' },
  INSUFFICIENT_STORAGE: { status: 507, message: 'out of disk space' },
} as const satisfies Record<string, ErrorSpec>;

/** A code of the catalogue: a string that is not in it does not type-check as an `ErrorCode`. */
export type ErrorCode = keyof typeof ErrorCatalogue;

/** The names a message template fills in, e.g. `'id'` for `'VM {id} not found'`. */
type Placeholders<S extends string> = S extends `${string}{${infer K}}${infer Rest}`
  ? K | Placeholders<Rest>
  : never;
type TemplateNames<C extends ErrorCode> = Placeholders<(typeof ErrorCatalogue)[C]['message']>;
/** Codes whose template needs no data. */
type PlainCode = { [C in ErrorCode]: [TemplateNames<C>] extends [never] ? C : never }[ErrorCode];

export type ErrorDetails = Record<string, unknown>;
/** The data an error carries when its message comes from the template: every name the template uses. */
export type ErrorData<C extends ErrorCode> = ErrorDetails & { [K in TemplateNames<C>]: string | number };

/** True when `code` is in the catalogue (for codes read from another process's answers). */
export function isErrorCode(code: unknown): code is ErrorCode {
  return typeof code === 'string' && Object.hasOwn(ErrorCatalogue, code);
}

/**
 * The template of `code` filled in from `data`.
 *
 * @example renderErrorMessage('VM_NOT_FOUND', { id: 'a1' }) // 'VM a1 not found'
 */
export function renderErrorMessage(code: ErrorCode, data: ErrorDetails = {}): string {
  return ErrorCatalogue[code].message.replace(/\{(\w+)\}/g, (whole, name: string) =>
    Object.hasOwn(data, name) ? String(data[name]) : whole,
  );
}

/**
 * The one domain error: a catalogue code, a message for humans and the data (`details`) a client
 * can read. The message is the code's template filled from the data unless the thrower gives one.
 *
 * @example
 * throw new NqvmError('VM_NOT_FOUND', { id });
 * throw new NqvmError('VM_INVALID_STATE', `VM ${name} is ${state}; stop it first`, { state });
 */
export class NqvmError<C extends ErrorCode = ErrorCode> extends Error {
  readonly code: ErrorCode;
  readonly details: ErrorDetails | undefined;
  constructor(code: C & PlainCode);
  constructor(code: C, data: ErrorData<C>);
  constructor(code: C, message: string, details?: ErrorDetails);
  constructor(code: C, messageOrData?: string | ErrorDetails, details?: ErrorDetails) {
    const data = typeof messageOrData === 'string' ? details : messageOrData;
    super(typeof messageOrData === 'string' ? messageOrData : renderErrorMessage(code, data));
    this.name = 'NqvmError';
    this.code = code;
    this.details = data;
  }
}
