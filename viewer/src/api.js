/**
 * The service's REST routes and stream URL as the viewer uses them (same origin as the page).
 * Every call sends `X-API-Key` when a key is set and `Authorization: Bearer <token>` for session routes;
 * error replies ({"error": {code, message, field}}) become ApiError with the server's message.
 */

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

  async request(method, path, { json, form, raw = false } = {}) {
    const init = { method, headers: this.headers() };
    if (json !== undefined) {
      init.headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(json);
    } else if (form !== undefined) {
      init.body = form;
    }
    const reply = await fetch(this.base + path, init);
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
    return this.request('POST', this.session(`/objects/${objectId}/box`), { json: { box } });
  }

  clicks(objectId, points, labels, mode) {
    return this.request('POST', this.session(`/objects/${objectId}/clicks`), { json: { points, labels, mode } });
  }
  scribble(objectId, voxels, label, mode) {
    return this.request('POST', this.session(`/objects/${objectId}/scribble`), { json: { voxels, label, mode } });
  }

  lasso(objectId, axis, index, contour, label, mode) {
    return this.request('POST', this.session(`/objects/${objectId}/lasso`),
      { json: { axis, index, contour, label, mode } });
  }


  undo(objectId) {
    return this.request('POST', this.session(`/objects/${objectId}/undo`));
  }

  removeObject(objectId) {
    return this.request('DELETE', this.session(`/objects/${objectId}`));
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
