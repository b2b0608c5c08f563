/**
 * Decoder of the stream's binary diff frames (format version 1, docs/wire-format.md), for the browser.
 *
 * A port of the reader half of app/schemas/frames.py: frames are untrusted, so every rule of "Validation by
 * readers" is checked and a bad frame throws Error('frame: ...'). Runs stay runs until applied, so a small
 * frame never becomes a large allocation. zlib payloads are inflated with the platform's DecompressionStream
 * (browsers, node >= 18: no dependency, so `node --test` runs without node_modules), with a cap on the size.
 */
export const MAGIC = [0x53, 0x47, 0x44, 0x46]; // "SGDF"
export const FRAME_FORMAT_VERSION = 1;
export const HEADER_SIZE = 64;
export const KIND_DIFF = 0;
export const KIND_SNAPSHOT = 1;
export const FLAG_ZLIB = 0x01;
export const FLAG_HAS_BBOX = 0x02;
export const STEP_NAMES = ['none', 'box', 'gru', 'decoder', 'mask', 'undo', 'reset', 'remove'];
export const DEFAULT_MAX_VOXELS = 2 ** 31;
export const DEFAULT_MAX_PAYLOAD_BYTES = 32 * 2 ** 20;
const MAX_VARINT_BYTES = 5;

function fail(message) {
  throw new Error(`frame: ${message}`);
}

/**
 * Inflate a zlib stream with the platform's DecompressionStream ('deflate' is zlib-wrapped, RFC 1950), reading
 * chunk by chunk and giving up past `limit` bytes; corrupt, truncated or trailing data is refused.
 */
export async function inflateCapped(data, limit) {
  const reader = new Blob([data]).stream().pipeThrough(new DecompressionStream('deflate')).getReader();
  const chunks = [];
  let total = 0;
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      total += value.length;
      if (total > limit) {
        reader.cancel().catch(() => {});
        fail(`zlib payload inflates beyond ${limit} bytes`);
      }
      chunks.push(value);
    }
  } catch (e) {
    if (String(e.message).startsWith('frame:')) throw e;
    fail(`corrupt or truncated zlib payload (${e.message})`);
  }
  const out = new Uint8Array(total);
  let pos = 0;
  for (const c of chunks) {
    out.set(c, pos);
    pos += c.length;
  }
  // A zlib stream ends with the Adler-32 of its output; some DecompressionStream implementations (node's)
  // ignore bytes after the end, so data whose last 4 bytes are not that checksum carries trailing junk.
  const n = data.length;
  const tail = n >= 4 ? ((data[n - 4] << 24) | (data[n - 3] << 16) | (data[n - 2] << 8) | data[n - 1]) >>> 0 : -1;
  if (tail !== adler32(out)) fail('trailing data after the zlib stream');
  return out;
}

function adler32(bytes) {
  let a = 1;
  let b = 0;
  for (let i = 0; i < bytes.length; i++) {
    a = (a + bytes[i]) % 65521;
    b = (b + a) % 65521;
  }
  return ((b << 16) | a) >>> 0;
}

/** LEB128 varints of at most 5 bytes (values < 2**35 stay exact in a double). */
function readVarints(bytes) {
  const values = [];
  let value = 0;
  let shift = 0;
  let n = 0;
  for (let p = 0; p < bytes.length; p++) {
    const b = bytes[p];
    value += (b & 0x7f) * 2 ** shift;
    n += 1;
    if (n > MAX_VARINT_BYTES) fail('varint longer than 5 bytes');
    if (b & 0x80) {
      shift += 7;
    } else {
      values.push(value);
      value = 0;
      shift = 0;
      n = 0;
    }
  }
  if (n > 0) fail('payload ends inside a varint');
  return values;
}

/**
 * Decode one frame (ArrayBuffer or Uint8Array). Resolves to
 * {kind, isSnapshot, objectId, version, baseVersion, step, shape: [D, H, W], count, bbox | null,
 *  runStarts: Float64Array, runLengths: Float64Array, runValues: Uint8Array, compressed, nbytes}.
 */
export async function decodeFrame(buffer, { maxVoxels = DEFAULT_MAX_VOXELS, maxPayloadBytes = DEFAULT_MAX_PAYLOAD_BYTES } = {}) {
  const bytes = buffer instanceof Uint8Array ? buffer : new Uint8Array(buffer);
  if (bytes.length < HEADER_SIZE) fail(`short header (${bytes.length} < ${HEADER_SIZE} bytes)`);
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (!MAGIC.every((m, i) => bytes[i] === m)) fail('wrong magic');
  const formatVersion = bytes[4];
  const kind = bytes[5];
  const flags = bytes[6];
  const stepCode = bytes[7];
  if (formatVersion !== FRAME_FORMAT_VERSION) fail(`unknown format version ${formatVersion}`);
  if (kind !== KIND_DIFF && kind !== KIND_SNAPSHOT) fail(`unknown kind ${kind}`);
  if (flags & ~(FLAG_ZLIB | FLAG_HAS_BBOX)) fail(`unknown flag bits 0x${flags.toString(16)}`);
  if (stepCode >= STEP_NAMES.length) fail(`unknown step code ${stepCode}`);
  const u32 = (off) => dv.getUint32(off, true);
  const objectId = u32(8);
  const version = u32(12);
  const baseVersion = u32(16);
  const shape = [u32(20), u32(24), u32(28)];
  const count = u32(32);
  const nRuns = u32(36);
  const bboxRaw = [0, 1, 2, 3, 4, 5].map((k) => u32(40 + 4 * k));
  if (shape.some((d) => d === 0)) fail(`zero dimension in shape ${shape}`);
  const voxels = shape[0] * shape[1] * shape[2];
  if (voxels > maxVoxels) fail(`shape ${shape} has ${voxels} voxels, above the limit ${maxVoxels}`);
  if (count > voxels) fail(`count ${count} > D*H*W ${voxels}`);
  if (nRuns > count) fail(`n_runs ${nRuns} > count ${count}`);
  if (kind === KIND_SNAPSHOT && baseVersion !== 0) fail('snapshot with a non-zero base_version');
  const hasBbox = (flags & FLAG_HAS_BBOX) !== 0;
  if (hasBbox !== count > 0) fail('bbox flag does not match count > 0');
  let bbox = null;
  if (hasBbox) {
    for (let a = 0; a < 3; a++) {
      if (!(bboxRaw[a] <= bboxRaw[a + 3] && bboxRaw[a + 3] < shape[a])) fail(`bbox ${bboxRaw} outside shape or reversed`);
    }
    bbox = bboxRaw;
  } else if (bboxRaw.some((v) => v !== 0)) {
    fail('non-zero bbox fields without the bbox flag');
  }
  let payload = bytes.subarray(HEADER_SIZE);
  const compressed = (flags & FLAG_ZLIB) !== 0;
  if (compressed) {
    payload = await inflateCapped(payload, Math.min(10 * nRuns, maxPayloadBytes));
  } else if (payload.length > maxPayloadBytes) {
    fail(`payload of ${payload.length} bytes above the limit ${maxPayloadBytes}`);
  }
  if (payload.length < 2 * nRuns) fail(`payload of ${payload.length} bytes cannot hold ${nRuns} runs`);
  const varints = readVarints(payload);
  if (varints.length !== 2 * nRuns) fail(`expected ${2 * nRuns} varints, got ${varints.length}`);
  const runStarts = new Float64Array(nRuns);
  const runLengths = new Float64Array(nRuns);
  const runValues = new Uint8Array(nRuns);
  let end = 0;
  let total = 0;
  for (let r = 0; r < nRuns; r++) {
    const start = end + varints[2 * r];
    const packed = varints[2 * r + 1];
    const length = Math.floor(packed / 2) + 1;
    runStarts[r] = start;
    runLengths[r] = length;
    runValues[r] = packed % 2;
    end = start + length;
    total += length;
    if (end > voxels) fail(`run ${r} reaches past D*H*W (${end} > ${voxels})`);
  }
  if (total !== count) fail(`run lengths add up to ${total}, count is ${count}`);
  return {
    kind, isSnapshot: kind === KIND_SNAPSHOT, objectId, version, baseVersion, step: STEP_NAMES[stepCode], shape,
    count, bbox, runStarts, runLengths, runValues, compressed, nbytes: bytes.length,
  };
}

/** Write a decoded frame's runs into `mask` (Uint8Array of D*H*W); a snapshot first clears the mask. */
export function applyFrame(mask, frame) {
  const [d, h, w] = frame.shape;
  if (mask.length !== d * h * w) fail(`mask of ${mask.length} voxels, frame shape ${frame.shape}`);
  if (frame.isSnapshot) mask.fill(0);
  for (let r = 0; r < frame.runStarts.length; r++) {
    mask.fill(frame.runValues[r], frame.runStarts[r], frame.runStarts[r] + frame.runLengths[r]);
  }
}
