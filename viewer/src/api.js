/**
 * The service's REST routes and stream URL as the viewer uses them (same origin as the page).
 * Every call sends `X-API-Key` when a key is set and `Authorization: Bearer <token>` for session routes;
 * error replies ({"error": {code, message, field}}) become ApiError with the server's message.
 *
 * Every mask-changing prompt carries a fresh `Idempotency-Key`, and is sent again with the same key when the
 * network fails before a reply arrives (a reset connection, a dropped Wi-Fi): the server applies a keyed
 * prompt once and answers a resend with the reply it recorded, so the annotator never wonders whether a
 * click was applied (docs/service.md, "Exactly-once prompts").
 */

export const IDEMPOTENCY_KEY_HEADER = 'Idempotency-Key';
/** Resends of a keyed prompt after a network error, and the backoff before resend n: BASE * 2**n ms. */
export const PROMPT_RESENDS = 3;
export const RESEND_BASE_DELAY_MS = 100;

/** A uuid4 from the platform's CSPRNG (crypto.randomUUID needs a secure context; getRandomValues does not). */
export function newKey() {
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = [...b].map((v) => v.toString(16).padStart(2, '0')).join('');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

export class ApiError extends Error {
  constructor(status, code, message, field) {
    super(message);
    this.status = status;
    this.code = code;
    this.field = field;
  }
}

export class Api {
  constructor(base = '') {
    this.base = base;
    this.apiKey = '';
    this.sessionId = null;
    this.token = null;
  }

  headers(extra = {}) {
    const h = { ...extra };
    if (this.apiKey) h['X-API-Key'] = this.apiKey;
    if (this.token) h.Authorization = `Bearer ${this.token}`;
    return h;
  }

  async request(method, path, { json, form, raw = false, keyed = false } = {}) {
    const init = { method, headers: this.headers() };
    if (keyed) init.headers[IDEMPOTENCY_KEY_HEADER] = newKey();
    if (json !== undefined) {
      init.headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(json);
    } else if (form !== undefined) {
      init.body = form;
    }
    let reply;
    for (let resends = 0; ; resends++) {
      try {
        reply = await fetch(this.base + path, init);
        break;
      } catch (err) {
        // fetch rejects only when no reply came (network error): a keyed prompt is safe to send again.
        if (!keyed || resends >= PROMPT_RESENDS) throw err;
        await new Promise((resolve) => setTimeout(resolve, RESEND_BASE_DELAY_MS * 2 ** resends));
      }
    }
    if (!reply.ok) {
      let body = null;
      try {
        body = await reply.json();
      } catch {
        // not a JSON error body (a proxy's page): the status says it all
      }
      const e = body?.error || {};
      throw new ApiError(reply.status, e.code || 'http_error', e.message || `${method} ${path}: HTTP ${reply.status}`,
        e.field || null);
    }
    if (raw) return reply;
    return reply.status === 204 ? null : reply.json();
  }

  session(path = '') {
    return `/v1/sessions/${encodeURIComponent(this.sessionId)}${path}`;
  }

  /** POST /v1/sessions with the file as uploaded; keeps the new session's id and token. */
  async createSession(file) {
    const form = new FormData();
    form.append('file', file, file.name);
    this.token = null;
    const created = await this.request('POST', '/v1/sessions', { form });
    this.sessionId = created.session_id;
    this.token = created.token;
    return created;
  }

  /** Use an existing session: GET its info with the token (checks both). */
  async openSession(sessionId, token) {
    this.sessionId = sessionId;
    this.token = token;
    return this.request('GET', this.session());
  }

  box(objectId, box) {
    return this.request('POST', this.session(`/objects/${objectId}/box`), { json: { box }, keyed: true });
  }

  clicks(objectId, points, labels, mode) {
    return this.request('POST', this.session(`/objects/${objectId}/clicks`),
      { json: { points, labels, mode }, keyed: true });
  }
  scribble(objectId, voxels, label, mode) {
    return this.request('POST', this.session(`/objects/${objectId}/scribble`),
      { json: { voxels, label, mode }, keyed: true });
  }

  lasso(objectId, axis, index, contour, label, mode) {
    return this.request('POST', this.session(`/objects/${objectId}/lasso`),
      { json: { axis, index, contour, label, mode }, keyed: true });
  }


  undo(objectId) {
    return this.request('POST', this.session(`/objects/${objectId}/undo`), { keyed: true });
  }

  removeObject(objectId) {
    return this.request('DELETE', this.session(`/objects/${objectId}`), { keyed: true });
  }

  async maskBlob(objectId, format) {
    const reply = await this.request('GET', this.session(`/objects/${objectId}/mask?format=${format}`), { raw: true });
    return reply.blob();
  }

  /** ws(s):// URL of the stream; browsers cannot set headers on a WebSocket, so token and key go in the query. */
  streamUrl(location) {
    const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const q = new URLSearchParams({ token: this.token });
    if (this.apiKey) q.set('api_key', this.apiKey);
    return `${proto}//${location.host}${this.base}${this.session('/stream')}?${q}`;
  }
}
