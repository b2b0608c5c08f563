// The viewer's mask mirror: the ordering rules of docs/wire-format.md (apply, ignore duplicates, resync on gaps).
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';

import { MaskMirror } from '../src/mirror.js';

const bin = (name) => new Uint8Array(readFileSync(new URL(`fixtures/${name}.bin`, import.meta.url))).buffer;
const json = (name) => JSON.parse(readFileSync(new URL(`fixtures/${name}.json`, import.meta.url), 'utf8'));
const HELLO = JSON.stringify({ type: 'hello', session_id: 's', shape: [6, 17, 19], frame_version: 1, objects: {} });

/** The object's mask after versions 1..n, from the fixtures' expected changed voxels. */
function expectedMask(n) {
  const mask = new Uint8Array(6 * 17 * 19);
  ['seq_1_box', 'seq_2_gru', 'seq_3_decoder'].slice(0, n).forEach((name) => {
    const e = json(name);
    e.indices.forEach((i, k) => { mask[i] = e.values[k]; });
  });
  return mask;
}

test('applies diffs in order and ignores a duplicate', async () => {
  const m = new MaskMirror();
  const seen = [];
  m.onChange((oid, frame) => seen.push([oid, frame.version, frame.step]));
  assert.deepEqual(m.onText(HELLO), []);
  for (const name of ['seq_1_box', 'seq_2_gru', 'seq_2_gru', 'seq_3_decoder']) {
    assert.deepEqual(await m.onBinary(bin(name)), []);
  }
  assert.equal(m.versions.get(5), 3);
  assert.deepEqual(m.masks.get(5), expectedMask(3));
  assert.deepEqual(seen, [[5, 1, 'box'], [5, 2, 'gru'], [5, 3, 'decoder']]);
});

test('a missed frame asks for a resync once and waits for the snapshot', async () => {
  const m = new MaskMirror();
  m.onText(HELLO);
  await m.onBinary(bin('seq_1_box'));
  const replies = await m.onBinary(bin('seq_3_decoder')); // version 2 never arrived
  assert.deepEqual(replies.map(JSON.parse), [{ type: 'resync', object_id: 5, from_version: 1 }]);
  assert.deepEqual(await m.onBinary(bin('seq_3_decoder')), []); // dropped while the resync is pending
  assert.equal(m.versions.get(5), 1);
  assert.deepEqual(m.masks.get(5), expectedMask(1));
});

test('a snapshot replaces the mask and ends the pending resync', async () => {
  const m = new MaskMirror();
  const hello = JSON.parse(HELLO);
  hello.objects = { 2: 7 };
  assert.deepEqual(m.onText(JSON.stringify(hello)).map(JSON.parse), [{ type: 'resync', object_id: null, from_version: null }]);
  await m.onBinary(bin('snapshot_zlib'));
  assert.equal(m.versions.get(2), 7);
  assert.equal(m.masks.get(2).reduce((s, v) => s + v, 0), json('snapshot_zlib').count);
  assert.equal(m.pendingResync.size, 0);
});

test('a removed object is dropped; a bad frame asks for a full resync', async () => {
  const m = new MaskMirror();
  m.onText(HELLO);
  await m.onBinary(bin('seq_1_box'));
  const removed = [];
  m.onChange((oid, frame) => removed.push([oid, frame]));
  m.onText(JSON.stringify({ type: 'removed', object_id: 5, version: 2 }));
  assert.equal(m.masks.has(5), false);
  assert.deepEqual(removed, [[5, null]]);
  const replies = await m.onBinary(new Uint8Array([1, 2, 3]).buffer);
  assert.equal(JSON.parse(replies[0]).type, 'resync');
  assert.match(m.errors[0], /^frame: short header/);
});

test('a hello behind the mirror (the server restored an older history) resyncs instead of taking the next frame for a duplicate', async () => {
  const m = new MaskMirror();
  m.onText(HELLO);
  for (const name of ['seq_1_box', 'seq_2_gru']) await m.onBinary(bin(name));
  assert.equal(m.versions.get(5), 2);
  // Reconnected: the server only recorded version 1 of object 5.
  const hello = JSON.parse(HELLO);
  hello.objects = { 5: 1 };
  assert.deepEqual(m.onText(JSON.stringify(hello)).map(JSON.parse), [{ type: 'resync', object_id: null, from_version: null }]);
  assert.ok(m.pendingResync.has(5));
  // The server's next real version 2 is not ignored as a duplicate: it waits for the snapshot instead.
  assert.deepEqual(await m.onBinary(bin('seq_2_gru')), []);
  assert.equal(m.framesApplied, 2);
});

test('a hello equal to the mirror asks for nothing; an object the hello no longer lists is dropped', async () => {
  const m = new MaskMirror();
  m.onText(HELLO);
  await m.onBinary(bin('seq_1_box'));
  const hello = JSON.parse(HELLO);
  hello.objects = { 5: 1 };
  assert.deepEqual(m.onText(JSON.stringify(hello)), []);
  const dropped = [];
  m.onChange((oid, frame) => dropped.push([oid, frame]));
  assert.deepEqual(m.onText(HELLO), []);
  assert.equal(m.masks.has(5), false);
  assert.equal(m.versions.has(5), false);
  assert.deepEqual(dropped, [[5, null]]);
});
