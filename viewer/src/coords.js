/**
 * The one place where viewer coordinates become the service's voxel coordinates.
 *
 * niivue reports positions in world millimetres (RAS, through the image's NIfTI affine) and keeps the image
 * data in the file's native voxel order: voxel (i, j, k) with i varying fastest. The service holds every
 * volume as a (D, H, W) array indexed [z, y, x] in SimpleITK GetArrayFromImage order, which is the same
 * memory layout read the other way round: [z, y, x] = [k, j, i], and the flat index
 * (z * H + y) * W + x equals niivue's native index i + j * dimI + k * dimI * dimJ. So:
 *
 *     world mm --inverse(affine)--> native (i, j, k) --reverse--> service (z, y, x)
 *
 * Boxes are INCLUSIVE [z0, y0, x0, z1, y1, x1] (app/schemas/prompts.py).
 */

/** Invert a 4x4 matrix given as 4 rows (Gauss-Jordan with partial pivoting); throws when singular. */
export function invert4(m) {
  const a = m.map((row, r) => [...row.map(Number), ...[0, 1, 2, 3].map((c) => (c === r ? 1 : 0))]);
  for (let c = 0; c < 4; c++) {
    let p = c;
    for (let r = c + 1; r < 4; r++) if (Math.abs(a[r][c]) > Math.abs(a[p][c])) p = r;
    if (Math.abs(a[p][c]) < 1e-12) throw new Error('affine: singular matrix');
    [a[c], a[p]] = [a[p], a[c]];
    const d = a[c][c];
    for (let k = 0; k < 8; k++) a[c][k] /= d;
    for (let r = 0; r < 4; r++) {
      if (r === c) continue;
      const f = a[r][c];
      for (let k = 0; k < 8; k++) a[r][k] -= f * a[c][k];
    }
  }
  return a.map((row) => row.slice(4));
}

/** Native (i, j, k) voxel position (fractional) of a world point given the image's 4x4 affine (rows). */
export function worldToNative(affine, mm, inverse = invert4(affine)) {
  const v = [mm[0], mm[1], mm[2], 1];
  return [0, 1, 2].map((r) => inverse[r].reduce((s, x, c) => s + x * v[c], 0));
}

/** Service voxel [z, y, x] of native voxel (i, j, k), rounded to the nearest voxel centre. */
export function nativeToZYX(ijk) {
  return [ijk[2], ijk[1], ijk[0]].map((v) => Math.round(v) + 0); // + 0 turns -0 into 0
}

/** Whether [z, y, x] lies inside a (D, H, W) shape. */
export function insideShape(zyx, shape) {
  return zyx.every((v, a) => Number.isInteger(v) && v >= 0 && v < shape[a]);
}

/** The service voxel [z, y, x] under a world point, or null when it falls outside the volume. */
export function worldToZYX(affine, mm, shape, inverse = invert4(affine)) {
  const zyx = nativeToZYX(worldToNative(affine, mm, inverse));
  return insideShape(zyx, shape) ? zyx : null;
}

/** niivue's native dims [dimI, dimJ, dimK] must equal the session's (W, H, D); else the mapping is wrong. */
export function checkDims(niftiDims, shape) {
  const [d, h, w] = shape;
  const [i, j, k] = niftiDims;
  if (i !== w || j !== h || k !== d) {
    throw new Error(`volume: the viewer's image is ${i}x${j}x${k} (i, j, k) but the session's shape (D, H, W) ` +
      `is ${d}x${h}x${w}; open the same file the session was created from`);
  }
}

/**
 * Inclusive box [z0, y0, x0, z1, y1, x1] spanned by two corners (each [z, y, x]), clamped to the volume,
 * grown by `halfDepth` slices on every axis where the corners coincide (the slice axis of a 2D box).
 */
export function boxFromCorners(a, b, shape, halfDepth = 0) {
  const lo = [];
  const hi = [];
  for (let ax = 0; ax < 3; ax++) {
    let l = Math.min(a[ax], b[ax]);
    let h = Math.max(a[ax], b[ax]);
    if (l === h && halfDepth > 0) {
      l -= halfDepth;
      h += halfDepth;
    }
    lo.push(Math.max(0, Math.min(shape[ax] - 1, l)));
    hi.push(Math.max(0, Math.min(shape[ax] - 1, h)));
  }
  return [...lo, ...hi];
}

/** C-order flat index of [z, y, x] in a (D, H, W) volume (docs/wire-format.md). */
export function flatIndex(zyx, shape) {
  return (zyx[0] * shape[1] + zyx[1]) * shape[2] + zyx[2];
}

/**
 * NIfTI dims, pixdims and affine (16 values, row-major) for a (D, H, W) array with spacing [sz, sy, sx]
 * (an .npz upload): i = x, j = y, k = z, identity LPS direction at the origin, i.e. RAS diag(-sx, -sy, sz),
 * which is what the server's NIfTI export of such a session carries, so a downloaded mask overlays it.
 */
export function niftiGeometry(shape, spacing) {
  const [d, h, w] = shape;
  const [sz, sy, sx] = spacing;
  return {
    dims: [w, h, d],
    pixDims: [sx, sy, sz],
    affine: [-sx, 0, 0, 0, 0, -sy, 0, 0, 0, 0, sz, 0, 0, 0, 0, 1],
  };
}

/**
 * The voxels a scribble stroke covers: the [z, y, x] positions the pointer visited, joined by straight
 * segments (the pointer skips voxels when it moves fast), without repeats, in drawing order.
 */
export function strokeVoxels(points) {
  const out = [];
  const seen = new Set();
  const add = (v) => {
    const key = v.join(',');
    if (!seen.has(key)) {
      seen.add(key);
      out.push(v);
    }
  };
  points.forEach((p, n) => {
    if (n === 0) {
      add(p);
      return;
    }
    const q = points[n - 1];
    const steps = Math.max(...[0, 1, 2].map((a) => Math.abs(p[a] - q[a])));
    for (let s = 1; s <= steps; s++) add([0, 1, 2].map((a) => Math.round(q[a] + ((p[a] - q[a]) * s) / steps) + 0));
    if (steps === 0) add(p);
  });
  return out;
}

/**
 * A lasso drawn on one slice: the slice's `axis` (the one the points share; else the one they vary least
 * along), its `index`, and the `contour` in the two other axes in volume order (axis 0: [y, x]), consecutive
 * repeats dropped. Throws when fewer than 3 vertices remain (a click, not a lasso).
 */
export function lassoFromPoints(points) {
  const range = [0, 1, 2].map((a) => Math.max(...points.map((p) => p[a])) - Math.min(...points.map((p) => p[a])));
  const axis = range.indexOf(Math.min(...range));
  const index = Math.round(points.reduce((s, p) => s + p[axis], 0) / points.length);
  const others = [0, 1, 2].filter((a) => a !== axis);
  const contour = [];
  for (const p of points) {
    const v = others.map((a) => p[a]);
    const last = contour[contour.length - 1];
    if (!last || last[0] !== v[0] || last[1] !== v[1]) contour.push(v);
  }
  if (contour.length < 3) throw new Error('contour: a lasso needs at least 3 distinct vertices; drag around the region');
  return { axis, index, contour };
}
