// The viewer's frame decoder against frames made by the server's encoder (fixtures/, see
// tests/viewer/frame_fixtures.py) and against the validation rules of docs/wire-format.md.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';

import { applyFrame, decodeFrame } from '../src/frames.js';

const fixture = (name) => ({
  bytes: new Uint8Array(readFileSync(new URL(`fixtures/${name}.bin`, import.meta.url))),
  expected: JSON.parse(readFileSync(new URL(`fixtures/${name}.json`, import.meta.url), 'utf8')),
});

function expandRuns(frame) {
  const indices = [];
  const values = [];
  for (let r = 0; r < frame.runStarts.length; r++) {
    for (let k = 0; k < frame.runLengths[r]; k++) {
      indices.push(frame.runStarts[r] + k);
      values.push(frame.runValues[r]);
    }
  }
  return { indices, values };
}

for (const name of ['doc_example', 'empty_diff', 'snapshot_zlib', 'snapshot_plain', 'seq_1_box', 'seq_2_gru',
  'seq_3_decoder']) {
  test(`decodes ${name} like the server's decoder`, async () => {
    const { bytes, expected } = fixture(name);
    const f = await decodeFrame(bytes);
    assert.deepEqual(
      [f.kind, f.objectId, f.version, f.baseVersion, f.step, f.shape, f.count, f.bbox, f.compressed, f.runStarts.length],
      [expected.kind, expected.object_id, expected.version, expected.base_version, expected.step, expected.shape,
        expected.count, expected.bbox, expected.compressed, expected.n_runs],
    );
    const { indices, values } = expandRuns(f);
    assert.deepEqual(indices, expected.indices);
    assert.deepEqual(values, expected.values);
    assert.equal(f.nbytes, bytes.length);
  });
}

test('the wire-format example is voxel [0, 1, 3] set to 1 by an undo', async () => {
  const f = await decodeFrame(fixture('doc_example').bytes);
  const mask = new Uint8Array(2 * 3 * 4);
  applyFrame(mask, f);
  assert.equal(mask[(0 * 3 + 1) * 4 + 3], 1);
  assert.equal(mask.reduce((s, v) => s + v, 0), 1);
  assert.equal(f.step, 'undo');
  assert.deepEqual(f.bbox, [0, 1, 3, 0, 1, 3]);
});

test('a snapshot clears the mask before writing its runs; diffs apply on top', async () => {
  const snap = await decodeFrame(fixture('snapshot_zlib').bytes);
  const mask = new Uint8Array(snap.shape.reduce((a, b) => a * b, 1)).fill(1);
  applyFrame(mask, snap);
  const expected = fixture('snapshot_zlib').expected;
  assert.equal(mask.reduce((s, v) => s + v, 0), expected.count);
  for (const i of expected.indices) assert.equal(mask[i], 1);
  // the zlib and the plain snapshot of the same mask decode to the same runs
  const plain = await decodeFrame(fixture('snapshot_plain').bytes);
  assert.deepEqual(Array.from(plain.runStarts), Array.from(snap.runStarts));
  assert.ok(snap.compressed && !plain.compressed);
});

function withByte(bytes, offset, value) {
  const copy = bytes.slice();
  copy[offset] = value;
  return copy;
}

function withU32(bytes, offset, value) {
  const copy = bytes.slice();
  new DataView(copy.buffer).setUint32(offset, value, true);
  return copy;
}

test('refuses malformed frames with a frame: error', async () => {
  const doc = fixture('doc_example').bytes;
  const zlib = fixture('snapshot_zlib').bytes;
  const bad = {
    'short header': doc.slice(0, 63),
    'wrong magic': withByte(doc, 0, 0x58),
    'unknown format version': withByte(doc, 4, 2),
    'unknown kind': withByte(doc, 5, 7),
    'unknown flag bits': withByte(doc, 6, 0x06),
    'unknown step code': withByte(doc, 7, 99),
    'zero dimension': withU32(doc, 20, 0),
    'count > D*H*W': withU32(doc, 32, 25),
    'n_runs > count': withU32(doc, 36, 2),
    'bbox outside the shape': withU32(doc, 60, 4),
    'reversed bbox': withU32(doc, 44, 2),
    'payload ends inside a varint': withByte(doc, 65, 0x81),
    'trailing varints': Uint8Array.from([...doc, 0x00, 0x00]),
    'run past the volume': withByte(doc, 64, 30),
    'truncated zlib': zlib.slice(0, zlib.length - 4),
    'zlib with trailing junk': Uint8Array.from([...zlib, 0x01, 0x02]),
    'corrupt zlib': withByte(zlib, 66, zlib[66] ^ 0xff),
    'snapshot with a base version': withU32(zlib, 16, 3),
    'bbox fields without the flag': withU32(fixture('empty_diff').bytes, 40, 1),
  };
  for (const [why, bytes] of Object.entries(bad)) {
    await assert.rejects(decodeFrame(bytes), /^Error: frame: /, why);
  }
});

test('refuses shapes above the reader limit', async () => {
  await assert.rejects(decodeFrame(fixture('doc_example').bytes, { maxVoxels: 23 }), /above the limit/);
});
