// The mapping from niivue's world millimetres to the service's (z, y, x) voxels (src/coords.js).
import assert from 'node:assert/strict';
import { test } from 'node:test';

import {
  boxFromCorners, checkDims, flatIndex, invert4, lassoFromPoints, niftiGeometry, strokeVoxels, worldToNative, worldToZYX,
} from '../src/coords.js';

const SHAPE = [7, 11, 13]; // (D, H, W): all different, so a swapped axis cannot pass

/** NIfTI voxel (i, j, k) -> world mm through a 4x4 affine (rows), as niivue computes positions. */
function voxelToWorld(affine, ijk) {
  const v = [...ijk, 1];
  return [0, 1, 2].map((r) => affine[r].reduce((s, x, c) => s + x * v[c], 0));
}

const rows = (flat) => [0, 1, 2, 3].map((r) => flat.slice(4 * r, 4 * r + 4));

const AFFINES = {
  'identity direction (npz / SimpleITK default), anisotropic spacing': rows(niftiGeometry(SHAPE, [2.5, 0.7, 0.9]).affine),
  'flipped axes with an origin': [[0.8, 0, 0, -40], [0, -1.2, 0, 30], [0, 0, -3, 12], [0, 0, 0, 1]],
  'permuted axes (a sagittal acquisition)': [[0, 0, 2, -5], [1, 0, 0, 3], [0, -1, 0, 8], [0, 0, 0, 1]],
  'oblique (rotated 30 degrees)': [[Math.cos(0.5), -Math.sin(0.5), 0, 1], [Math.sin(0.5), Math.cos(0.5), 0, 2],
    [0, 0, 1.5, 3], [0, 0, 0, 1]],
};

for (const [name, affine] of Object.entries(AFFINES)) {
  test(`every voxel centre maps back to [k, j, i]: ${name}`, () => {
    const inverse = invert4(affine);
    for (let k = 0; k < SHAPE[0]; k++) {
      for (let j = 0; j < SHAPE[1]; j++) {
        for (let i = 0; i < SHAPE[2]; i++) {
          const mm = voxelToWorld(affine, [i, j, k]);
          assert.deepEqual(worldToZYX(affine, mm, SHAPE, inverse), [k, j, i]);
        }
      }
    }
  });

  test(`a point within half a voxel picks that voxel, outside the volume gives null: ${name}`, () => {
    const mm = voxelToWorld(affine, [4.4, 2.6, 6.3]);
    assert.deepEqual(worldToZYX(affine, mm, SHAPE), [6, 3, 4]);
    assert.equal(worldToZYX(affine, voxelToWorld(affine, [-0.6, 0, 0]), SHAPE), null);
    assert.equal(worldToZYX(affine, voxelToWorld(affine, [0, 0, SHAPE[0] - 0.4]), SHAPE), null);
  });
}

test('the inverse is exact', () => {
  const a = AFFINES['flipped axes with an origin'];
  const native = worldToNative(a, voxelToWorld(a, [1.25, 2.5, 3.75]));
  native.forEach((v, ax) => assert.ok(Math.abs(v - [1.25, 2.5, 3.75][ax]) < 1e-9));
  assert.throws(() => invert4([[1, 0, 0, 0], [2, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]), /singular/);
});

test('the service flat index equals niivue\'s native index i + j*dimI + k*dimI*dimJ', () => {
  const [d, h, w] = SHAPE;
  for (const [k, j, i] of [[0, 0, 0], [6, 10, 12], [3, 1, 7], [1, 9, 0]]) {
    assert.equal(flatIndex([k, j, i], SHAPE), i + j * w + k * w * h);
  }
  assert.equal(flatIndex([d - 1, h - 1, w - 1], SHAPE), d * h * w - 1);
});

test('a 2D box on a slice: inclusive, ordered, clamped, grown only along the slice axis', () => {
  assert.deepEqual(boxFromCorners([3, 9, 2], [3, 1, 8], SHAPE), [3, 1, 2, 3, 9, 8]);
  assert.deepEqual(boxFromCorners([3, 9, 2], [3, 1, 8], SHAPE, 2), [1, 1, 2, 5, 9, 8]);
  assert.deepEqual(boxFromCorners([0, -4, 2], [0, 30, 20], SHAPE, 3), [0, 0, 2, 3, 10, 12]);
});

test('niivue dims must be the session shape reversed', () => {
  checkDims([13, 11, 7], SHAPE);
  assert.throws(() => checkDims([7, 11, 13], SHAPE), /volume: the viewer's image is 7x11x13/);
});

test('a fast stroke is joined into a gapless line of voxels, without repeats', () => {
  const voxels = strokeVoxels([[3, 2, 2], [3, 2, 2], [3, 2, 7], [3, 5, 7]]);
  assert.deepEqual(voxels[0], [3, 2, 2]);
  assert.equal(voxels.length, 6 + 3); // x 2..7 on row 2, then y 3..5 on column 7
  for (let n = 1; n < voxels.length; n++) {
    const step = [0, 1, 2].map((a) => Math.abs(voxels[n][a] - voxels[n - 1][a]));
    assert.ok(Math.max(...step) === 1, `gap between ${voxels[n - 1]} and ${voxels[n]}`);
  }
});

test('a lasso takes the slice its points share and the contour in the other axes', () => {
  const axial = lassoFromPoints([[4, 1, 1], [4, 1, 1], [4, 1, 6], [4, 6, 6], [4, 6, 1]]);
  assert.deepEqual(axial, { axis: 0, index: 4, contour: [[1, 1], [1, 6], [6, 6], [6, 1]] });
  const sagittal = lassoFromPoints([[1, 2, 9], [5, 2, 9], [5, 6, 9]]);
  assert.equal(sagittal.axis, 2);
  assert.equal(sagittal.index, 9);
  assert.deepEqual(sagittal.contour, [[1, 2], [5, 2], [5, 6]]);
  assert.throws(() => lassoFromPoints([[0, 0, 0], [0, 0, 0], [0, 0, 1]]), /contour/);
});
