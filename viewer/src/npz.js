/**
 * Read the image of a CVPR 2025 challenge .npz (key `imgs`, a (D, H, W) array) so niivue can show it.
 *
 * niivue reads .npz itself, but takes whichever array comes first and ignores the spacing; the service
 * reads `imgs` and decides the spacing order itself (docs/wire-format.md, Uploads). So the viewer unzips
 * with fflate, parses the one .npy header it needs (the format is a short Python dict literal, no parser
 * library exists for it in the bundle), and builds a NIfTI with the spacing the server reported.
 */
import { unzipSync } from 'fflate';

const TYPES = {
  u1: Uint8Array, i1: Int8Array, b1: Uint8Array, u2: Uint16Array, i2: Int16Array, u4: Uint32Array, i4: Int32Array,
  f4: Float32Array, f8: Float64Array,
};

/** Parse one .npy file -> {shape, data: TypedArray in C order}. Refuses big-endian and Fortran order. */
export function parseNpy(bytes) {
  const magic = [0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59];
  if (!magic.every((m, i) => bytes[i] === m)) throw new Error('file: not an .npy array inside the .npz');
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const major = bytes[6];
  const headerLen = major === 1 ? dv.getUint16(8, true) : dv.getUint32(8, true);
  const start = major === 1 ? 10 : 12;
  const header = new TextDecoder('latin1').decode(bytes.subarray(start, start + headerLen));
  const descr = /'descr':\s*'([^']+)'/.exec(header)?.[1];
  const fortran = /'fortran_order':\s*True/.test(header);
  const shapeText = /'shape':\s*\(([^)]*)\)/.exec(header)?.[1];
  if (!descr || shapeText === undefined) throw new Error('file: unreadable .npy header');
  const shape = shapeText.split(',').map((s) => s.trim()).filter(Boolean).map(Number);
  const Type = TYPES[descr.slice(1)];
  if (!Type || descr[0] === '>') throw new Error(`file: the viewer cannot show dtype ${descr}`);
  if (fortran) throw new Error('file: the viewer cannot show a Fortran-order array; save it in C order');
  const n = shape.reduce((a, b) => a * b, 1);
  const offset = bytes.byteOffset + start + headerLen;
  const copy = bytes.buffer.slice(offset, offset + n * Type.BYTES_PER_ELEMENT); // aligned for the typed view
  return { shape, data: new Type(copy) };
}

/** The `imgs` array of a challenge .npz -> {shape: [D, H, W], data: Float32Array}. */
export function readChallengeNpz(buffer) {
  const files = unzipSync(new Uint8Array(buffer), { filter: (f) => f.name === 'imgs.npy' });
  if (!files['imgs.npy']) throw new Error("file: the .npz has no 'imgs' array");
  const { shape, data } = parseNpy(files['imgs.npy']);
  if (shape.length !== 3) throw new Error(`file: 'imgs' must be (D, H, W), got shape (${shape})`);
  return { shape, data: data instanceof Float32Array ? data : Float32Array.from(data) };
}
