// The native job API of `diffuse serve` (docs/server.md): every call carries the access token
// when the server asks for one; job events are read as a server-sent event stream over fetch
// (EventSource cannot send the Authorization header).

const TOKEN_KEY = 'diffuse.token';

export class ApiError extends Error {
  constructor(status, errors) {
    super(errors.length ? errors[0].message : `HTTP ${status}`);
    this.status = status;
    this.errors = errors; // [{field, message}]
  }
}

let askToken = async () => false;

// `ask` shows the token dialog; it resolves true when a token was entered.
export function onTokenNeeded(ask) {
  askToken = ask;
}

export function getToken() {
  return localStorage.getItem(TOKEN_KEY) || '';
}

export function setToken(token) {
  if (token) localStorage.setItem(TOKEN_KEY, token);
  else localStorage.removeItem(TOKEN_KEY);
}

function errorsOf(status, body) {
  if (body && body.error) return body.errors && body.errors.length ? body.errors : [body.error];
  return [{ field: '', message: `the server answered ${status}` }];
}

// fetch with the token; a 401 asks for the token once and retries.
async function send(path, init = {}, retried = false) {
  const headers = new Headers(init.headers || {});
  const token = getToken();
  if (token) headers.set('Authorization', `Bearer ${token}`);
  const res = await fetch(path, { ...init, headers });
  if (res.status === 401 && !retried && (await askToken())) return send(path, init, true);
  return res;
}

async function json(path, init) {
  const res = await send(path, init);
  let body = null;
  try {
    body = await res.json();
  } catch {
    body = null;
  }
  if (!res.ok) throw new ApiError(res.status, errorsOf(res.status, body));
  return body;
}

export const models = () => json('/api/v1/models');

export const parseInfotext = (infotext) =>
  json('/api/v1/infotext', { method: 'POST', body: JSON.stringify({ infotext }) }).then((r) => r.request);

export const submitJob = (request) => json('/api/v1/jobs', { method: 'POST', body: JSON.stringify(request) });

export const cancelJob = (id) => json(`/api/v1/jobs/${id}`, { method: 'DELETE' });

// Calls onEvent(type, data) for each event until the job finishes; resolves with the last event.
export async function followJob(id, onEvent, signal) {
  const res = await send(`/api/v1/jobs/${id}/events`, { signal });
  if (!res.ok) throw new ApiError(res.status, errorsOf(res.status, await res.json().catch(() => null)));
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) throw new ApiError(0, [{ field: '', message: 'the connection to the server ended' }]);
    buf += value;
    let end;
    while ((end = buf.indexOf('\n\n')) >= 0) {
      const block = buf.slice(0, end);
      buf = buf.slice(end + 2);
      let type = 'message';
      let data = '';
      for (const line of block.split('\n')) {
        if (line.startsWith('event: ')) type = line.slice(7);
        else if (line.startsWith('data: ')) data += line.slice(6);
      }
      if (!data) continue; // keep-alive comment
      const event = JSON.parse(data);
      onEvent(type, event);
      if (type !== 'progress') {
        reader.cancel().catch(() => {});
        return { type, event };
      }
    }
  }
}

export function base64ToBlob(b64, type = 'image/png') {
  const bin = atob(b64);
  const bytes = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  return new Blob([bytes], { type });
}

export function blobToDataUrl(blob) {
  return new Promise((resolve, reject) => {
    const r = new FileReader();
    r.onload = () => resolve(r.result);
    r.onerror = () => reject(r.error);
    r.readAsDataURL(blob);
  });
}
