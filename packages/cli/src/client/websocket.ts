/**
 * WebSockets to the API (the VM console, interactive exec), trusting the server as the context
 * says (pinned certificate, CA file) and sending its token; a refused upgrade becomes the API's
 * error, with its stable code.
 */
import WebSocket from 'ws';
import { type ApiClient, type ApiError, errorOf, type Query } from './api';

/**
 * Opens `pathname` (an `/api/v1/...` path) as a WebSocket; `onRefused` gets the API's answer when
 * the server refuses the upgrade (not found, not allowed, not running), which ends the socket.
 *
 * @example
 * const ws = openApiWebSocket(api, `/api/v1/vms/${id}/console/ws`, { scrollback: 65536 }, fail);
 */
export function openApiWebSocket(
  api: ApiClient,
  pathname: string,
  query: Query,
  onRefused: (err: ApiError) => void,
): WebSocket {
  const httpUrl = api.url(pathname, query);
  const url = new URL(httpUrl);
  url.protocol = httpUrl.protocol === 'https:' ? 'wss:' : 'ws:';
  const ws = new WebSocket(url, {
    headers: api.authHeaders(),
    ...(api.transportOptions(httpUrl) as WebSocket.ClientOptions),
  });
  ws.on('unexpected-response', (req, res) => {
    const chunks: Buffer[] = [];
    res.on('data', (c: Buffer) => chunks.push(c));
    res.on('end', () => {
      onRefused(errorOf(res.statusCode ?? 0, res.headers, Buffer.concat(chunks).toString('utf8')));
      req.destroy();
    });
  });
  return ws;
}
