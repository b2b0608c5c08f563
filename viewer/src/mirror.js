/**
 * Local masks and versions of every object of one session, rebuilt from the stream (no I/O here).
 *
 * The browser twin of client/_mirror.py, with the same rules per object at local version v:
 * - snapshot frame: replace the mask, v = frame.version (ends a pending resync);
 * - diff with base_version == v: apply, v = frame.version (a new object starts at v = 0, all zeros);
 * - diff with version <= v: a duplicate, ignored;
 * - any other diff: a frame was missed -> ask for a resync once and drop that object's diffs until the
 *   snapshot arrives (frames on one connection are in order, so nothing after the snapshot is lost);
 * - hello (every connection, reconnects included): an object whose server version differs from v in either
 *   direction is resynced, and an object the server no longer lists is dropped (a server restored from an
 *   older history would otherwise have its next real frame taken for a duplicate).
 * `onText` / `onBinary` return the JSON strings to send back.
 */
import { applyFrame, decodeFrame } from './frames.js';

export class MaskMirror {
  constructor() {
    this.sessionId = null;
    this.shape = null;
    this.masks = new Map(); // object id -> Uint8Array(D*H*W)
    this.versions = new Map(); // object id -> version
    this.pendingResync = new Set();
    this.errors = [];
    this.framesApplied = 0;
    this.listeners = [];
  }

  /** `fn(objectId, frame | null)` after every applied frame (null: the object was removed). */
  onChange(fn) {
    this.listeners.push(fn);
  }

  static resyncMessage(objectId, fromVersion = null) {
    return JSON.stringify({ type: 'resync', object_id: objectId, from_version: fromVersion });
  }

  onText(text) {
    let msg;
    try {
      msg = JSON.parse(text);
    } catch {
      this.errors.push('stream: unreadable JSON message');
      return [];
    }
    if (msg.type === 'hello') {
      this.sessionId = msg.session_id;
      this.shape = msg.shape.map(Number);
      const listed = msg.objects || {};
      [...this.versions.keys()]
        .filter((oid) => !(String(oid) in listed))
        .forEach((oid) => {
          this.masks.delete(oid);
          this.versions.delete(oid);
          this.pendingResync.delete(oid);
          this.listeners.forEach((fn) => fn(oid, null));
        });
      const differ = Object.entries(listed)
        .filter(([oid, v]) => v !== (this.versions.get(Number(oid)) || 0))
        .map(([oid]) => Number(oid));
      if (differ.length) {
        differ.forEach((oid) => this.pendingResync.add(oid));
        return [MaskMirror.resyncMessage(null)];
      }
    } else if (msg.type === 'removed') {
      this.masks.delete(msg.object_id);
      this.versions.delete(msg.object_id);
      this.pendingResync.delete(msg.object_id);
      this.listeners.forEach((fn) => fn(msg.object_id, null));
    } else if (msg.type === 'error') {
      this.errors.push(msg.error?.message || 'stream: error');
    }
    return [];
  }

  /** Async (zlib payloads inflate asynchronously): feed messages one at a time, in arrival order. */
  async onBinary(data) {
    let frame;
    try {
      frame = await decodeFrame(data);
    } catch (e) {
      this.errors.push(e.message);
      this.masks.forEach((_, oid) => this.pendingResync.add(oid));
      return [MaskMirror.resyncMessage(null)];
    }
    if (this.shape && frame.shape.some((v, a) => v !== this.shape[a])) {
      this.errors.push(`frame: shape ${frame.shape} differs from the session's ${this.shape}`);
      return [];
    }
    const oid = frame.objectId;
    const size = frame.shape[0] * frame.shape[1] * frame.shape[2];
    if (frame.isSnapshot) {
      this.apply(oid, this.masks.get(oid) || new Uint8Array(size), frame);
      this.pendingResync.delete(oid);
      return [];
    }
    if (this.pendingResync.has(oid)) return [];
    const local = this.versions.get(oid) || 0;
    let mask = this.masks.get(oid);
    if (!mask && frame.baseVersion === 0) mask = new Uint8Array(size);
    if (mask && frame.baseVersion === local) {
      this.apply(oid, mask, frame);
      return [];
    }
    if (mask && frame.version <= local) return [];
    this.pendingResync.add(oid);
    return [MaskMirror.resyncMessage(oid, local)];
  }

  apply(oid, mask, frame) {
    applyFrame(mask, frame);
    this.masks.set(oid, mask);
    this.versions.set(oid, frame.version);
    this.framesApplied += 1;
    this.listeners.forEach((fn) => fn(oid, frame));
  }
}
