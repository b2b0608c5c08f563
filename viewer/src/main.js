/**
 * The viewer page: niivue shows the volume, mouse gestures become prompts, the stream paints the masks.
 *
 * Flow: upload the chosen file (POST /v1/sessions) -> show the same file in niivue -> check niivue's native
 * dims against the session's (D, H, W) -> open the WebSocket stream -> every diff frame updates the local
 * masks (mirror.js) and the overlay. Prompts go over REST; the overlay changes only through the stream.
 */
import { DRAG_MODE, Niivue, NVImage } from '@niivue/niivue';

import { Api, ApiError } from './api.js';
import {
  boxFromCorners, checkDims, invert4, lassoFromPoints, nativeToZYX, niftiGeometry, strokeVoxels, worldToNative, worldToZYX,
} from './coords.js';
import { MaskMirror } from './mirror.js';
import { readChallengeNpz } from './npz.js';

const $ = (id) => document.getElementById(id);
const OVERLAY_COLORMAP = 'segsvc-objects'; // 0 transparent, 1 other objects (blue), 2 selected object (red)
const NIFTI_FLOAT32 = 16;

const api = new Api('');
const state = {
  shape: null, // session (D, H, W)
  affine: null,
  inverse: null,
  back: null, // niivue image of the volume
  overlay: null, // niivue image holding the label overlay
  mirror: null,
  ws: null,
  selected: 1,
  extraObjects: new Set([1]), // ids shown in the list before the server knows them
  busy: 0,
};

const nv = new Niivue({
  backColor: [0.07, 0.07, 0.07, 1],
  crosshairColor: [0.3, 0.8, 1, 0.5],
  crosshairWidth: 1,
  dragAndDropEnabled: false,
  isResizeCanvas: true,
});
window.segViewer = { api, state, nv }; // for debugging from the browser console

// --- status --------------------------------------------------------------------------------------

function setStatus(text) {
  $('status').textContent = text;
}

function showError(e, what = '') {
  let text = (what ? `${what} failed: ` : '') + (e instanceof Error ? e.message : String(e));
  if (e instanceof ApiError && (e.code === 'api_key_required' || e.code === 'invalid_api_key')) {
    text += '\nEnter the server\'s API key in the field at the top.';
    $('api-key').focus();
  }
  $('error').textContent = text;
}

async function busy(label, fn) {
  state.busy += 1;
  $('status').dataset.state = 'busy';
  $('error').textContent = '';
  try {
    return await fn();
  } catch (e) {
    showError(e, label);
    return undefined;
  } finally {
    state.busy -= 1;
    if (state.busy === 0) $('status').dataset.state = 'idle';
  }
}

function describeReply(op, reply) {
  const ms = reply.timings_ms?.total;
  return `${op} on object ${reply.object_id}: version ${reply.version}, ${reply.changed} voxels changed` +
    (ms !== undefined ? `, ${ms.toFixed(0)} ms` : '');
}

// --- volume and overlay --------------------------------------------------------------------------

async function clearVolumes() {
  while (nv.volumes.length) nv.removeVolume(nv.volumes[nv.volumes.length - 1]);
}

/** Show `file` in niivue; npz is converted with the spacing the server reported. */
async function showVolume(file, session) {
  await clearVolumes();
  const name = file.name.toLowerCase();
  if (name.endsWith('.npz')) {
    const { shape, data } = readChallengeNpz(await file.arrayBuffer());
    const g = niftiGeometry(shape, session.spacing);
    const bytes = NVImage.createNiftiArray(g.dims, g.pixDims, g.affine, NIFTI_FLOAT32, data);
    await nv.loadFromArrayBuffer(bytes.buffer, name.replace(/\.npz$/, '.nii'));
  } else {
    await nv.loadFromFile(file);
  }
  const back = nv.volumes[0];
  checkDims([back.hdr.dims[1], back.hdr.dims[2], back.hdr.dims[3]], session.shape);
  state.back = back;
  state.shape = session.shape.map(Number);
  state.affine = back.hdr.affine;
  state.inverse = invert4(back.hdr.affine);
  const overlay = NVImage.zerosLike(back, 'uint8');
  overlay.hdr.scl_slope = 1; // the source's intensity scaling must not apply to labels
  overlay.hdr.scl_inter = 0;
  overlay.name = 'masks';
  overlay.colormap = OVERLAY_COLORMAP;
  overlay.opacity = 0.5;
  overlay.cal_min = 0;
  overlay.cal_max = 2;
  overlay.trustCalMinMax = true;
  nv.addVolume(overlay);
  overlay.cal_min = 0;
  overlay.cal_max = 2;
  state.overlay = overlay;
  nv.updateGLVolume();
}

/** Overlay value of voxel v: 2 when the selected object has it, 1 when another object has it, else 0. */
function labelAt(v) {
  const sel = state.mirror.masks.get(state.selected);
  if (sel && sel[v]) return 2;
  for (const [oid, mask] of state.mirror.masks) if (oid !== state.selected && mask[v]) return 1;
  return 0;
}

function repaintRuns(frame) {
  const img = state.overlay.img;
  if (frame === null || frame.isSnapshot) {
    for (let v = 0; v < img.length; v++) img[v] = labelAt(v);
  } else {
    for (let r = 0; r < frame.runStarts.length; r++) {
      const end = frame.runStarts[r] + frame.runLengths[r];
      for (let v = frame.runStarts[r]; v < end; v++) img[v] = labelAt(v);
    }
  }
  nv.updateGLVolume();
}

// --- stream --------------------------------------------------------------------------------------

function openStream() {
  if (state.ws) state.ws.close(1000);
  const mirror = new MaskMirror();
  state.mirror = mirror;
  mirror.onChange((oid, frame) => {
    repaintRuns(frame);
    renderObjects();
    if (frame) {
      $('stream').textContent = `stream: object ${oid} ${frame.step} -> version ${frame.version} ` +
        `(${frame.count} voxels in ${frame.nbytes} bytes)`;
    }
  });
  const connect = () => {
    const ws = new WebSocket(api.streamUrl(window.location));
    ws.binaryType = 'arraybuffer';
    let queue = Promise.resolve(); // frames decode asynchronously: keep them in arrival order
    ws.onmessage = (event) => {
      queue = queue.then(async () => {
        const replies = typeof event.data === 'string' ? mirror.onText(event.data) : await mirror.onBinary(event.data);
        if (ws.readyState === WebSocket.OPEN) replies.forEach((m) => ws.send(m));
      }).catch(showError);
    };
    ws.onclose = (event) => {
      if (state.ws !== ws || event.code === 1000) return;
      if ([4401, 4404, 4410].includes(event.code)) {
        showError(`stream closed: ${event.reason || event.code}`);
        return;
      }
      setTimeout(() => { if (state.ws === ws) connect(); }, 1000); // a resync follows the new hello
    };
    state.ws = ws;
  };
  connect();
}

// --- objects -------------------------------------------------------------------------------------

function objectIds() {
  const ids = new Set([...state.extraObjects, ...(state.mirror ? state.mirror.versions.keys() : [])]);
  return [...ids].sort((a, b) => a - b);
}

function renderObjects() {
  const list = $('objects');
  list.textContent = '';
  for (const oid of objectIds()) {
    const li = document.createElement('li');
    const mask = state.mirror?.masks.get(oid);
    const voxels = mask ? mask.reduce((s, v) => s + v, 0) : 0;
    const version = state.mirror?.versions.get(oid) ?? 0;
    li.textContent = `object ${oid} · v${version} · ${voxels} voxels`;
    li.dataset.objectId = String(oid);
    li.dataset.version = String(version);
    if (oid === state.selected) li.className = 'selected';
    li.onclick = () => selectObject(oid);
    list.appendChild(li);
  }
}

function selectObject(oid) {
  state.selected = oid;
  if (state.overlay) repaintRuns(null);
  renderObjects();
}

function enableControls(on) {
  for (const id of ['new-object', 'undo', 'remove', 'download']) $(id).disabled = !on;
}

// --- prompts -------------------------------------------------------------------------------------

function voxelAtFrac(frac) {
  if (!state.back || frac[0] < 0) return null;
  const mm = state.back.convertFrac2MM(frac, true);
  return worldToZYX(state.affine, mm, state.shape, state.inverse);
}

async function sendClick(frac, label) {
  const zyx = voxelAtFrac(frac);
  if (!zyx || !api.token) return;
  const mode = $('mode').value;
  await busy('click', async () => {
    const reply = await api.clicks(state.selected, [zyx], [label], mode);
    setStatus(describeReply(`${label ? 'foreground' : 'background'} click [${zyx}] (${mode})`, reply));
  });
}

async function sendBox(fracStart, fracEnd) {
  if (!state.back || !api.token || fracStart[0] < 0 || fracEnd[0] < 0) return;
  const corner = (f) => nativeToZYX(worldToNative(state.affine, state.back.convertFrac2MM(f, true), state.inverse));
  const depth = Math.max(0, Math.floor(Number($('box-depth').value) || 0));
  const box = boxFromCorners(corner(fracStart), corner(fracEnd), state.shape, depth);
  await busy('box', async () => {
    const reply = await api.box(state.selected, box);
    setStatus(describeReply(`box [${box}]`, reply));
  });
}

// Scribbles and lassos: the page's own pointer handlers follow the drag (niivue reports only its ends) while
// niivue's left and right buttons do nothing; the drawn [z, y, x] positions go out on release.
const drawing = { points: null, label: 1 };

const drawTool = () => $('draw').value;

/** Region prompts need the decoder step: "gru" alone answers them as "both". */
const regionMode = () => ($('mode').value === 'decoder' ? 'decoder' : 'both');

function voxelAtEvent(e) {
  const rect = $('gl').getBoundingClientRect();
  const dpr = nv.uiData.dpr || 1;
  const frac = nv.canvasPos2frac([(e.clientX - rect.left) * dpr, (e.clientY - rect.top) * dpr]);
  return frac ? voxelAtFrac(frac) : null;
}

function startDrawing(e) {
  if (!drawTool() || !state.back || !api.token || e.ctrlKey || (e.button !== 0 && e.button !== 2)) return;
  drawing.points = [];
  drawing.label = e.button === 2 ? 0 : 1;
  followDrawing(e);
}

function followDrawing(e) {
  if (!drawing.points) return;
  const zyx = voxelAtEvent(e);
  if (zyx) drawing.points.push(zyx);
  setStatus(`${drawTool()}: ${drawing.points.length} points`);
}

async function finishDrawing() {
  const points = drawing.points;
  drawing.points = null;
  if (!points || !points.length) return;
  const tool = drawTool();
  const what = drawing.label ? 'foreground' : 'background';
  await busy(tool, async () => {
    let reply;
    if (tool === 'scribble') {
      reply = await api.scribble(state.selected, strokeVoxels(points), drawing.label, regionMode());
    } else {
      const { axis, index, contour } = lassoFromPoints(points);
      reply = await api.lasso(state.selected, axis, index, contour, drawing.label, regionMode());
    }
    setStatus(describeReply(`${what} ${tool} (${regionMode()})`, reply));
  });
}

function applyMouseConfig() {
  const boxMode = $('box-mode').checked;
  const left = drawTool() ? DRAG_MODE.none : boxMode ? DRAG_MODE.callbackOnly : DRAG_MODE.crosshair;
  nv.setMouseEventConfig({
    // Ctrl, not Shift: niivue treats Shift + left drag as a pan whatever the configured mode.
    leftButton: { primary: left, withCtrl: DRAG_MODE.callbackOnly },
    rightButton: DRAG_MODE.none,
    centerButton: DRAG_MODE.pan,
  });
}

nv.onMouseUp = (ui) => {
  if (ui.isDragging || !ui.fracPos || drawTool()) return; // drags are boxes (onDragRelease); drawing: its own
  if ($('box-mode').checked && !ui.mouseButtonRightDown) return;
  sendClick(ui.fracPos, ui.mouseButtonRightDown ? 0 : 1);
};

nv.onDragRelease = (params) => { // in draw mode only Ctrl + drag reaches here (the left button draws)
  const [a, b] = [params.fracStart, params.fracEnd];
  if (Math.abs(a[0] - b[0]) + Math.abs(a[1] - b[1]) + Math.abs(a[2] - b[2]) < 1e-6) return; // a click
  sendBox(a, b);
};

nv.onLocationChange = (loc) => {
  if (!state.back) return;
  const zyx = worldToZYX(state.affine, loc.mm, state.shape, state.inverse);
  $('location').textContent = zyx ? `voxel [z, y, x] = [${zyx}]` : '';
};

// --- sessions ------------------------------------------------------------------------------------

function chosenFile() {
  const file = $('file').files[0];
  if (!file) throw new Error('file: choose a volume file first');
  if (/\.(zip|dcm)$/i.test(file.name)) {
    throw new Error('file: the viewer shows NIfTI, NRRD, MHA and .npz volumes; upload DICOM series with the SDK');
  }
  return file;
}

async function startSession(file, session) {
  await showVolume(file, session);
  state.extraObjects = new Set([1]);
  state.selected = 1;
  $('session-id').value = session.session_id;
  $('token').value = api.token;
  openStream();
  renderObjects();
  enableControls(true);
}

$('upload').onclick = () => busy('upload', async () => {
  const file = chosenFile();
  api.apiKey = $('api-key').value.trim();
  setStatus(`uploading ${file.name} ...`);
  const created = await api.createSession(file);
  await startSession(file, created);
  setStatus(`session ${created.session_id}: shape (D, H, W) = ${created.shape}, spacing ${created.spacing} mm. ` +
    'Draw a box (Ctrl + drag, or box mode) to start object 1.');
});

$('open').onclick = () => busy('open', async () => {
  const file = chosenFile();
  api.apiKey = $('api-key').value.trim();
  const info = await api.openSession($('session-id').value.trim(), $('token').value.trim());
  await startSession(file, info);
  info.objects.forEach((o) => state.extraObjects.add(o.object_id));
  renderObjects();
  setStatus(`session ${info.session_id}: ${info.objects.length} objects`);
});

$('new-object').onclick = () => {
  const next = Math.max(0, ...objectIds()) + 1;
  state.extraObjects.add(next);
  selectObject(next);
};

$('undo').onclick = () => busy('undo', async () => {
  const reply = await api.undo(state.selected);
  setStatus(describeReply('undo', reply));
});

$('remove').onclick = () => busy('remove', async () => {
  await api.removeObject(state.selected);
  state.extraObjects.delete(state.selected);
  const rest = objectIds();
  selectObject(rest.length ? rest[0] : 1);
});

$('download').onclick = () => busy('download', async () => {
  const format = $('mask-format').value;
  const blob = await api.maskBlob(state.selected, format);
  const a = document.createElement('a');
  a.href = URL.createObjectURL(blob);
  a.download = `object-${state.selected}.${format}`;
  a.click();
  setTimeout(() => URL.revokeObjectURL(a.href), 10000);
});

$('box-mode').onchange = applyMouseConfig;
$('draw').onchange = applyMouseConfig;
$('view').onchange = () => {
  const types = { axial: nv.sliceTypeAxial, coronal: nv.sliceTypeCoronal, sagittal: nv.sliceTypeSagittal,
    multiplanar: nv.sliceTypeMultiplanar };
  nv.setSliceType(types[$('view').value]);
};

document.addEventListener('keydown', (e) => {
  if (e.target instanceof HTMLInputElement || e.target instanceof HTMLSelectElement) return;
  if (e.key === 'u' || ((e.ctrlKey || e.metaKey) && e.key === 'z')) $('undo').click();
  else if (e.key === 'n') $('new-object').click();
  else if (e.key === 'b') {
    $('box-mode').checked = !$('box-mode').checked;
    applyMouseConfig();
  } else if (e.key === 's' || e.key === 'l') {
    const tool = e.key === 's' ? 'scribble' : 'lasso';
    $('draw').value = $('draw').value === tool ? '' : tool;
    applyMouseConfig();
  }
});

async function init() {
  $('gl').addEventListener('contextmenu', (e) => e.preventDefault());
  $('gl').addEventListener('pointerdown', startDrawing);
  $('gl').addEventListener('pointermove', followDrawing);
  window.addEventListener('pointerup', () => { finishDrawing().catch(showError); });
  await nv.attachTo('gl');
  nv.addColormap(OVERLAY_COLORMAP, {
    R: [0, 40, 255], G: [0, 120, 40], B: [0, 255, 40], A: [0, 160, 200], I: [0, 128, 255],
  });
  nv.setSliceType(nv.sliceTypeAxial);
  nv.setInterpolation(true); // nearest neighbour: a voxel on screen is a voxel the prompts address
  applyMouseConfig();
  renderObjects();
}

init().catch(showError);
