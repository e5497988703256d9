/**
 * Firecracker's rule for API resource ids, as its API server applies it (`checked_id` in
 * `parsed_request.rs`, the same in 1.1.0, 1.13.1 and 1.16.1): the id in the path of
 * `/drives/{drive_id}`, `/network-interfaces/{iface_id}` and `/pmem/{id}` must not be empty and
 * may hold only `_` and alphanumeric characters in Rust's sense (`char::is_alphanumeric`:
 * Unicode Alphabetic or a number, so `é` passes and `-` does not). There is no length limit (the
 * 64-character limit is the instance `--id`'s, whose alphabet is alphanumerics and `-`). The
 * path is not percent-decoded, and the body's id must then equal the path's.
 */
export const EMPTY_ID_FAULT = 'The ID cannot be empty.';
export const INVALID_ID_FAULT = 'API Resource IDs can only contain alphanumeric characters and underscores.';

const ALLOWED = /^[\p{Alphabetic}\p{Nd}\p{Nl}\p{No}_]+$/u;

/**
 * The fault Firecracker answers for a resource id, or null when it takes it.
 *
 * @example
 * resourceIdFault('vol_0a1b'); // null
 * resourceIdFault('vol-0a1b'); // 'API Resource IDs can only contain alphanumeric characters and underscores.'
 */
export function resourceIdFault(id: string): string | null {
  if (id === '') return EMPTY_ID_FAULT;
  return ALLOWED.test(id) ? null : INVALID_ID_FAULT;
}
