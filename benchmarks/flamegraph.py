"""Folded stacks (py-spy's ``--format raw``: ``frame;frame;... count`` per line) -> an SVG flame graph and a
summary of where the samples went, per thread and per serving stage.

Stages are found by the leaf-most frame that names one (``STAGES``): a diff computed inside a GRU step counts
as diff encoding, the rest of that step as corrector.
"""

from __future__ import annotations

import html
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

# (stage, substrings of a frame "function (file:line)"); the leaf-most matching frame decides.
STAGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("diff encoding", ("encode_change", "encode_snapshot", "_mask_diff", "_sparse_diff", "net_change")),
    ("corrector (GRU step)", ("_gru_step",)),
    ("decoder step", ("_decoder_step", "_decode (", "refine (")),
    ("box / mask / text prompt", ("add_box", "set_mask", "add_text", "add_region")),
    ("session create (encode)", ("init_state",)),
    ("upload decoding", ("read_volume", "load_volume", "inflate")),
    ("mask download / label map", ("get_mask", "get_label_map", "save_mask", "file_response", "savez")),
    ("JSON / validation", ("json", "model_dump", "model_validate", "jsonable_encoder", "serialize_response")),
    ("HTTP / ASGI / WebSocket", ("h11", "httptools", "starlette", "uvicorn", "websockets", "fastapi")),
    ("metrics", ("prometheus",)),
)


def parse_folded(lines: Iterable[str]) -> Counter[tuple[str, ...]]:
    stacks: Counter[tuple[str, ...]] = Counter()
    for line in lines:
        line = line.rstrip("\n")
        if not line:
            continue
        stack, _, count = line.rpartition(" ")
        stacks[tuple(stack.split(";"))] += int(count)
    return stacks


def stage_of(stack: tuple[str, ...]) -> str:
    for frame in reversed(stack):
        for stage, needles in STAGES:
            if any(n in frame for n in needles):
                return stage
    return "other"


def thread_of(stack: tuple[str, ...]) -> str:
    """"thread (123): device_0" -> "device" (pool threads numbered by the executor); else the frame itself."""
    first = stack[0] if stack else "?"
    name = first.split(": ", 1)[1] if first.startswith("thread (") and ": " in first else first
    return name.rsplit("_", 1)[0] if name.rsplit("_", 1)[-1].isdigit() else name


def summary(stacks: Counter[tuple[str, ...]]) -> dict[str, object]:
    total = sum(stacks.values()) or 1
    threads: Counter[str] = Counter()
    stages: Counter[str] = Counter()
    by_thread_stage: dict[str, Counter[str]] = {}
    for stack, n in stacks.items():
        t, s = thread_of(stack), stage_of(stack)
        threads[t] += n
        stages[s] += n
        by_thread_stage.setdefault(t, Counter())[s] += n
    return {
        "samples": total,
        "threads_share": {k: round(v / total, 4) for k, v in threads.most_common()},
        "stages_share": {k: round(v / total, 4) for k, v in stages.most_common()},
        "stages_share_by_thread": {t: {k: round(v / total, 4) for k, v in c.most_common()}
                                   for t, c in by_thread_stage.items()},
    }


@dataclass
class _Node:
    name: str
    value: int = 0
    children: dict[str, _Node] = field(default_factory=dict)


def flamegraph_svg(stacks: Counter[tuple[str, ...]], path: Path, title: str, width: int = 1600,
                   row: int = 17, min_px: float = 1.0) -> None:
    """A static flame graph (root at the bottom); hover a box for its frame and sample share."""
    root = _Node("all")
    for stack, n in stacks.items():
        root.value += n
        node = root
        for frame in stack:
            node = node.children.setdefault(frame, _Node(frame))
            node.value += n

    def depth(node: _Node) -> int:
        return 1 + max((depth(c) for c in node.children.values()), default=0)

    rows = depth(root)
    height = rows * row + 40
    scale = width / max(root.value, 1)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="monospace" '
           f'font-size="11"><rect width="100%" height="100%" fill="#fff"/>'
           f'<text x="6" y="16" font-size="14">{html.escape(title)}</text>']

    def draw(node: _Node, x: float, level: int) -> None:
        w = node.value * scale
        if w < min_px:
            return
        y = height - (level + 1) * row
        share = 100.0 * node.value / max(root.value, 1)
        hue = 20 + (hash(node.name.split(" (")[0]) % 40)
        label = html.escape(node.name)
        out.append(f'<g><title>{label} — {node.value} samples, {share:.2f} %</title>'
                   f'<rect x="{x:.2f}" y="{y}" width="{w:.2f}" height="{row - 1}" fill="hsl({hue},90%,60%)"/>')
        chars = int(w / 6.6)
        if chars > 3:
            text = node.name if len(node.name) <= chars else node.name[: chars - 2] + ".."
            out.append(f'<text x="{x + 2:.2f}" y="{y + row - 5}">{html.escape(text)}</text>')
        out.append("</g>")
        cx = x
        for child in sorted(node.children.values(), key=lambda c: c.name):
            draw(child, cx, level + 1)
            cx += child.value * scale

    draw(root, 0.0, 0)
    out.append("</svg>")
    path.write_text("\n".join(out) + "\n")
