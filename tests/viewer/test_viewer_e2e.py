"""The built-in viewer end to end: a real server process, headless Chromium, the page's own file input and mouse.

Checks what a user relies on: the volume uploaded through the page is the one shown; a box and a click drawn
on the screen reach the server at the voxels under the mouse (the bright blocks of the synthetic volume are
where the screenshot shows them); the red overlay on the screen is the server's mask, voxel by voxel, before
and after the click (it is painted from the stream's diff frames only); undo reverts the server's mask; and
the server has an API key: the page loads without one, then sends the one the user types.
The final screenshot goes to the test's temporary folder, or to the path in ``VIEWER_SCREENSHOT`` (how
docs/images/viewer.png was made: tests never write into the repository by default).
"""

from __future__ import annotations

import io
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from scipy import ndimage

from app.config import hash_api_key
from tests.e2e.conftest import Server, start_server, stop_server
from tests.volumes import npz_bytes

sync_api = pytest.importorskip("playwright.sync_api", reason="the 'playwright' package (dev extra) is not installed")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian package 'chromium', see .ci/run)"),
]

SHAPE = (24, 64, 80)  # (D, H, W): H != W, so a swapped in-plane axis shows
BIG = (slice(6, 18), slice(12, 30), slice(44, 70))  # off-centre and not square: flips and swaps show
MARK = (slice(0, 24), slice(44, 56), slice(8, 16))  # a second bright block: fixes scale, offset and sign per axis
SPACING = (2.0, 1.0, 1.0)
KEY = "viewer-e2e-key"
WAIT_MS = 120_000


def asymmetric_volume(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    vol = rng.normal(0.0, 10.0, SHAPE).astype(np.float32)
    vol[BIG] += 200.0
    vol[MARK] += 200.0
    return vol


@pytest.fixture(scope="module")
def volume_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("viewer") / "phantom.npz"
    path.write_bytes(npz_bytes(imgs=asymmetric_volume(), spacing=np.asarray(SPACING)))
    return path


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        # headless Chromium has no GPU: WebGL2 (niivue) runs on SwiftShader
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--use-angle=swiftshader", "--enable-unsafe-swiftshader"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server for all tests (starting one takes a while): with an API key, so every test also checks that
    the page sends the key the user typed, on REST calls and on the stream."""
    s = start_server(tmp_path_factory.mktemp("viewer-server"), "--no-warmup", "--api-key-hash", hash_api_key(KEY))
    yield s
    stop_server(s)


def open_page(browser: Any, url: str) -> tuple[Any, list[str], list[dict[str, Any]]]:
    """A 1280x800 page at ``url``; returns it, its console errors and the prompt requests it sends."""
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    errors: list[str] = []
    prompts: list[dict[str, Any]] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)

    def record(request: Any) -> None:
        if request.method == "POST" and request.url.rsplit("/", 1)[-1] in ("box", "clicks", "undo"):
            prompts.append({"op": request.url.rsplit("/", 1)[-1], "body": request.post_data_json})

    page.on("request", record)
    page.goto(url + "/")
    return page, errors, prompts


def upload(page: Any, path: Path) -> tuple[str, str]:
    page.fill("#api-key", KEY)
    page.set_input_files("#file", str(path))
    page.click("#upload")
    page.wait_for_function("() => window.segViewer.state.overlay !== null && window.segViewer.state.ws !== null"
                           " && window.segViewer.state.ws.readyState === 1", timeout=WAIT_MS)
    return page.input_value("#session-id"), page.input_value("#token")


def canvas_pixels(page: Any) -> np.ndarray:
    """(h, w, 3) uint8 RGB of the niivue canvas as displayed."""
    from PIL import Image

    page.evaluate("() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)))")
    png = page.locator("#gl").screenshot()
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


class ScreenMap:
    """Voxel (y, x) of the shown axial slice <-> canvas pixel, measured from where the two bright blocks appear."""

    def __init__(self, pixels: np.ndarray) -> None:
        white = (pixels > 170).all(axis=2)
        labels, n = ndimage.label(ndimage.binary_opening(white, iterations=2))
        sizes = ndimage.sum(white, labels, range(1, n + 1))
        assert n >= 2, "the two bright blocks are not on the screen"
        big, mark = (int(i) + 1 for i in np.argsort(sizes)[::-1][:2])
        (by, bx), (my, mx) = (ndimage.center_of_mass(white, labels, i) for i in (big, mark))
        # block centres in voxel indices: BIG (y 20.5, x 56.5), MARK (y 49.5, x 11.5) -> a linear map per axis
        self.row_per_y = (by - my) / (20.5 - 49.5)
        self.col_per_x = (bx - mx) / (56.5 - 11.5)
        self.row0 = by - 20.5 * self.row_per_y
        self.col0 = bx - 56.5 * self.col_per_x
        self.big_rect = ndimage.find_objects((labels == big).astype(np.int32))[0]

    def pixel(self, y: float, x: float) -> tuple[int, int]:
        return int(round(self.row0 + y * self.row_per_y)), int(round(self.col0 + x * self.col_per_x))


def red_voxels(pixels: np.ndarray, screen: ScreenMap) -> tuple[np.ndarray, np.ndarray]:
    """Per voxel of the slice: whether the overlay is red at its centre; and whether the crosshair covers it."""
    red = np.zeros(SHAPE[1:], bool)
    covered = np.zeros(SHAPE[1:], bool)
    for y in range(SHAPE[1]):
        for x in range(SHAPE[2]):
            row, col = screen.pixel(y, x)
            r, g, b = (int(v) for v in pixels[min(row, pixels.shape[0] - 1), min(col, pixels.shape[1] - 1)])
            red[y, x] = r > g + 40 and r > b + 40
            covered[y, x] = b > r + 40  # the cyan crosshair
    return red, covered


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "X-API-Key": KEY}


def server_mask(server: Server, sid: str, token: str, oid: int = 1) -> tuple[np.ndarray, int]:
    r = httpx.get(f"{server.url}/v1/sessions/{sid}/objects/{oid}/mask", headers=auth(token), timeout=30)
    assert r.status_code == 200, r.text
    return np.load(io.BytesIO(r.content))["mask"], int(r.headers["X-Object-Version"])


def wait_for_version(page: Any, version: int, oid: int = 1) -> None:
    # Optional chaining: a page still opening has no mirror yet, and a predicate that throws fails at once.
    page.wait_for_function(f"() => window.segViewer?.state?.mirror?.versions.get({oid}) === {version} "
                           "&& window.segViewer.state.busy === 0", timeout=WAIT_MS)


def page_mask(page: Any, oid: int = 1) -> np.ndarray:
    flat = page.evaluate(f"() => Array.from(window.segViewer.state.mirror.masks.get({oid}))")
    return np.asarray(flat, np.uint8).reshape(SHAPE)


def assert_overlay_is(mask_slice: np.ndarray, pixels: np.ndarray, screen: ScreenMap) -> None:
    red, covered = red_voxels(pixels, screen)
    visible = ~covered
    agree = (red == mask_slice.astype(bool))[visible].mean()
    assert agree > 0.97, f"the overlay matches the server's mask on {agree:.1%} of the slice's voxels"


def test_upload_box_click_undo(browser: Any, server: Server, volume_file: Path, tmp_path: Path) -> None:
    page, errors, prompts = open_page(browser, server.url)
    sid, token = upload(page, volume_file)
    z = SHAPE[0] // 2  # niivue opens on the middle slice
    before = canvas_pixels(page)
    screen = ScreenMap(before)
    # the blocks appear as large as they are: 1 mm in-plane spacing on both axes, same scale
    assert abs(abs(screen.row_per_y) - abs(screen.col_per_x)) < 0.05 * abs(screen.col_per_x)
    box = page.locator("#gl").bounding_box()

    # Box: Ctrl + drag over the inner part of the big block, as the screen shows it.
    rows, cols = screen.big_rect
    top, bottom = rows.start + 0.2 * (rows.stop - rows.start), rows.stop - 0.2 * (rows.stop - rows.start)
    left, right = cols.start + 0.2 * (cols.stop - cols.start), cols.stop - 0.2 * (cols.stop - cols.start)
    page.keyboard.down("Control")
    page.mouse.move(box["x"] + left, box["y"] + top)
    page.mouse.down()
    page.mouse.move(box["x"] + (left + right) / 2, box["y"] + (top + bottom) / 2, steps=4)
    page.mouse.move(box["x"] + right, box["y"] + bottom, steps=4)
    page.mouse.up()
    page.keyboard.up("Control")
    wait_for_version(page, 1)
    assert [p["op"] for p in prompts] == ["box"]
    z0, y0, x0, z1, y1, x1 = prompts[0]["body"]["box"]
    assert z0 == z1 == z, "a 2D box on the shown slice"
    assert BIG[1].start <= y0 < y1 < BIG[1].stop and BIG[2].start <= x0 < x1 < BIG[2].stop, prompts[0]
    after_box, v_box = server_mask(server, sid, token)
    assert v_box == 1 and after_box.any()
    assert np.array_equal(page_mask(page), after_box), "the page's mask (from the stream) is the server's"
    pixels_box = canvas_pixels(page)
    assert_overlay_is(after_box[z], pixels_box, screen)

    # Foreground click at the centre of the big block (mode "both": a gru and a decoder step).
    cy, cx = screen.pixel(20, 56)
    page.mouse.click(box["x"] + cx, box["y"] + cy)
    wait_for_version(page, 3)
    assert prompts[-1] == {"op": "clicks", "body": {"points": [[z, 20, 56]], "labels": [1], "mode": "both"}}
    after_click, v_click = server_mask(server, sid, token)
    assert v_click == 3
    assert not np.array_equal(after_click, after_box), "the click changed the server's mask"
    assert np.array_equal(page_mask(page), after_click)
    pixels_click = canvas_pixels(page)
    assert_overlay_is(after_click[z], pixels_click, screen)
    # the screen changed where the mask changed on this slice (and the overlay follows it, checked above)
    changed_here = after_click[z] != after_box[z]
    if changed_here.any():
        red_before, _ = red_voxels(pixels_box, screen)
        red_after, covered = red_voxels(pixels_click, screen)
        flipped = (red_before != red_after) & ~covered
        assert flipped.sum() >= 0.9 * (changed_here & ~covered).sum()

    # Undo: the server's mask is the box's again, and so is the overlay.
    page.click("#undo")
    wait_for_version(page, 4)
    assert prompts[-1]["op"] == "undo"
    after_undo, v_undo = server_mask(server, sid, token)
    assert v_undo == 4 and np.array_equal(after_undo, after_box)
    assert_overlay_is(after_undo[z], canvas_pixels(page), screen)
    info = httpx.get(f"{server.url}/v1/sessions/{sid}", headers=auth(token)).json()
    assert info["objects"][0]["n_prompts"] == 3  # box, clicks, undo

    # Background click with the right button, then the final picture for the docs.
    page.mouse.click(box["x"] + cx, box["y"] + cy, button="right")
    wait_for_version(page, 6)
    assert prompts[-1]["body"]["labels"] == [0] and prompts[-1]["body"]["points"] == [[z, 20, 56]]
    screenshot = Path(os.environ.get("VIEWER_SCREENSHOT") or tmp_path / "viewer.png")
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(screenshot))
    assert not errors, errors
    page.close()


def test_new_object_and_download(browser: Any, server: Server, volume_file: Path, tmp_path: Path) -> None:
    page, errors, prompts = open_page(browser, server.url)
    sid, token = upload(page, volume_file)
    page.click("#new-object")
    page.click("#new-object")
    assert page.locator("#objects li.selected").get_attribute("data-object-id") == "3"
    page.check("#box-mode")  # box mode: a plain left drag draws the box
    screen = ScreenMap(canvas_pixels(page))
    box = page.locator("#gl").bounding_box()
    (r0, c0), (r1, c1) = screen.pixel(46, 9), screen.pixel(53, 14)
    page.mouse.move(box["x"] + c0, box["y"] + r0)
    page.mouse.down()
    page.mouse.move(box["x"] + c1, box["y"] + r1, steps=5)
    page.mouse.up()
    wait_for_version(page, 1, oid=3)
    assert "/objects/3/box" in page.evaluate("() => performance.getEntriesByType('resource').map((e) => e.name)"
                                             ".filter((n) => n.endsWith('/box')).join()")
    y0, x0, y1, x1 = (prompts[-1]["body"]["box"][i] for i in (1, 2, 4, 5))
    assert (min(y0, y1), min(x0, x1), max(y0, y1), max(x0, x1)) == (46, 9, 53, 14)
    with page.expect_download() as download:
        page.click("#download")
    assert download.value.suggested_filename == "object-3.nii.gz"
    path = tmp_path / download.value.suggested_filename
    download.value.save_as(path)
    import SimpleITK as sitk

    downloaded = sitk.GetArrayFromImage(sitk.ReadImage(str(path), imageIO="NiftiImageIO"))
    expected, version = server_mask(server, sid, token, oid=3)
    assert np.array_equal(downloaded, expected)

    # A second tab opens the same session by id + token with the same file: the mask comes as a snapshot.
    other, other_errors, other_prompts = open_page(browser, server.url)
    other.fill("#api-key", KEY)
    other.set_input_files("#file", str(volume_file))
    other.click("summary")
    other.fill("#session-id", sid)
    other.fill("#token", token)
    other.click("#open")
    wait_for_version(other, version, oid=3)
    assert np.array_equal(page_mask(other, oid=3), expected)
    assert other_prompts == []  # nothing uploaded or prompted again
    assert not errors and not other_errors, errors + other_errors
    other.close()
    page.close()


def test_the_page_loads_without_the_key_then_asks_for_it(browser: Any, server: Server, volume_file: Path) -> None:
    page, errors, _ = open_page(browser, server.url)  # the page itself loads without a key
    page.set_input_files("#file", str(volume_file))
    page.click("#upload")
    page.wait_for_function("() => document.querySelector('#error').textContent.includes('API key')",
                           timeout=WAIT_MS)
    assert page.evaluate("() => document.activeElement.id") == "api-key"
    sid, token = upload(page, volume_file)  # types the key, uploads again
    r = httpx.get(f"{server.url}/v1/sessions/{sid}", headers=auth(token))
    assert r.status_code == 200 and r.json()["shape"] == list(SHAPE)
    # the stream took the key from the query string: its hello arrived
    assert page.evaluate("() => window.segViewer.state.mirror.sessionId") == sid
    errors = [e for e in errors if "401" not in e]  # the refused upload logs its 401
    assert not errors, errors
    page.close()


def test_lasso_and_scribble_drawn_on_the_screen(browser: Any, server: Server, volume_file: Path) -> None:
    page, errors, _ = open_page(browser, server.url)
    regions: list[dict[str, Any]] = []
    page.on("request", lambda r: regions.append({"op": r.url.rsplit("/", 1)[-1], "body": r.post_data_json})
            if r.method == "POST" and r.url.rsplit("/", 1)[-1] in ("scribble", "lasso") else None)
    sid, token = upload(page, volume_file)
    z = SHAPE[0] // 2
    screen = ScreenMap(canvas_pixels(page))
    box = page.locator("#gl").bounding_box()

    def drag(points: list[tuple[float, float]], button: str = "left") -> None:
        (r, c), *rest = [screen.pixel(y, x) for y, x in points]
        page.mouse.move(box["x"] + c, box["y"] + r)
        page.mouse.down(button=button)
        for r, c in rest:
            page.mouse.move(box["x"] + c, box["y"] + r, steps=3)
        page.mouse.up(button=button)

    page.check("#box-mode")
    drag([(14, 46), (28, 68)])
    wait_for_version(page, 1)
    page.uncheck("#box-mode")

    # A background lasso (right button) around a square in the block's middle.
    page.select_option("#draw", "lasso")
    drag([(17, 52), (17, 60), (24, 60), (24, 52), (17, 52)], button="right")
    page.wait_for_function("() => window.segViewer.state.busy === 0 && "
                           "window.segViewer.state.mirror.versions.get(1) >= 3", timeout=WAIT_MS)
    assert regions[-1]["op"] == "lasso"
    body = regions[-1]["body"]
    assert body["axis"] == 0 and body["index"] == z and body["label"] == 0 and body["mode"] == "both"
    ys, xs = [v[0] for v in body["contour"]], [v[1] for v in body["contour"]]
    assert (min(ys), max(ys), min(xs), max(xs)) == (17, 24, 52, 60), body["contour"]
    mask, version = server_mask(server, sid, token)
    assert not mask[z, 17:25, 52:61].any(), "the lasso's region is background on the server"
    wait_for_version(page, version)
    assert np.array_equal(page_mask(page), mask)

    # A foreground scribble across it: every voxel the stroke crossed is the object's.
    page.keyboard.press("s")  # the key switches the tool
    assert page.input_value("#draw") == "scribble"
    drag([(20, 50), (20, 62)])
    page.wait_for_function(f"() => window.segViewer.state.busy === 0 && "
                           f"window.segViewer.state.mirror.versions.get(1) > {version}", timeout=WAIT_MS)
    body = regions[-1]["body"]
    assert regions[-1]["op"] == "scribble" and body["label"] == 1
    assert {tuple(v) for v in body["voxels"]} == {(z, 20, x) for x in range(50, 63)}
    mask, version = server_mask(server, sid, token)
    assert mask[z, 20, 50:63].all()
    wait_for_version(page, version)
    assert np.array_equal(page_mask(page), mask)
    assert not errors, errors
    page.close()
