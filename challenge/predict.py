"""Answering one challenge round by replaying every prompt so far.

The challenge starts a fresh process for each of its six rounds, so no session survives between rounds.
Each object's state is rebuilt deterministically instead: ``init_state`` (seed 0), then the class's box, then
its clicks in ``clicks_order``, one ``add_clicks`` call per click, exactly as an interactive session would
have received them one round at a time. Same model, weights, seed and prompts give the same logits, so the
replayed round-k answer equals the one a session kept alive since round 1 would give.

The classes are composed into one (D, H, W) uint8 label map with the service's overlap rule, as the
evaluation harness does: a voxel claimed by several classes goes to the most confident one (the highest
logit; ties: the higher class), see ``app.models.label_map``.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from challenge.case import ChallengeCase, read_case
from evaluation.cases import SpacingOrder

if TYPE_CHECKING:
    from app.models import Predictor

log = logging.getLogger("challenge")

SESSION_SEED = 0
"""``init_state`` seed of every case: the replay is deterministic only with one fixed seed."""


@dataclass(frozen=True)
class CaseReport:
    """What happened to one input file: ``error`` is None on success."""

    name: str
    classes: int
    prompts: int
    seconds: float
    error: str | None = None


def replay_case(predictor: Predictor, case: ChallengeCase, *, mode: str = "both") -> np.ndarray:
    """The (D, H, W) uint8 label map of a case after all its prompts (class i + 1 = prompts[i]).

    Prompts are replayed in the order the rounds gave them: every class's box, then every class's first
    click, then every class's second click, and so on. The order matters because the classes are one label
    map's (an exclusive session): a class's foreground click is a background click to the classes whose
    next step comes after it. The file does not say in which round a click was placed; a class that was
    already perfect in some round (no click then) is the only case where its n-th click and the others'
    differ in round, and the replay then puts it a round early.

    A class whose box is invalid starts from its first click instead; an invalid click is skipped. Both are
    logged: one bad prompt must not cost the other classes their answer. A class with no usable prompt stays
    empty.
    """
    state = predictor.init_state(case.image, case.spacing, seed=SESSION_SEED)
    for index, prompts in enumerate(case.prompts):
        if prompts.box is not None:
            try:
                predictor.add_box(state, index + 1, list(prompts.box))
            except ValueError as err:
                log.warning("%s: class %d: box %s ignored: %s", case.name, index + 1, prompts.box, err)
    for n in range(max((len(p.clicks) for p in case.prompts), default=0)):
        for index, prompts in enumerate(case.prompts):
            if n >= len(prompts.clicks):
                continue
            click = prompts.clicks[n]
            try:
                predictor.add_clicks(state, index + 1, [list(click.point)], [click.label], mode=mode)
            except ValueError as err:
                log.warning("%s: class %d: click %s ignored: %s", case.name, index + 1, click.point, err)
    return predictor.get_label_map(state, sorted(state.objects), "confidence").astype(np.uint8)


def write_segs(path: Path, segs: np.ndarray) -> None:
    """Write ``segs`` as ``path`` (npz, key ``segs``) atomically: a reader never sees half a file.

    The file gets the ordinary permissions of a new file (0666 less the umask), like any other output the
    evaluator collects: ``tempfile.mkstemp`` would leave it 0600, unreadable to an evaluator running as
    another user. The temporary name is unique to this process and opened exclusively ("x"), so two writers
    never share it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.stem}.{os.getpid()}.{secrets.token_hex(4)}.npz.tmp"
    try:
        with open(tmp, "xb") as f:
            np.savez_compressed(f, segs=segs)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def predict_folder(
    predictor: Predictor,
    inputs: str | Path,
    outputs: str | Path,
    *,
    mode: str = "both",
    spacing_order: SpacingOrder = "xyz",
) -> list[CaseReport]:
    """Answer every ``inputs/*.npz`` into ``outputs/<same name>.npz``, in name order.

    A case that fails is logged and reported (its output is not written); the other cases still run.
    """
    inputs, outputs = Path(inputs), Path(outputs)
    if not inputs.is_dir():
        raise ValueError(f"inputs: {inputs} is not a folder")
    paths = sorted(inputs.glob("*.npz"))
    if not paths:
        log.warning("no .npz file in %s: nothing to do", inputs)
    reports: list[CaseReport] = []
    for path in paths:
        started = time.perf_counter()
        classes = prompts = 0
        try:
            case = read_case(path, spacing_order=spacing_order)
            classes = len(case.prompts)
            prompts = sum((p.box is not None) + len(p.clicks) for p in case.prompts)
            segs = replay_case(predictor, case, mode=mode)
            write_segs(outputs / path.name, segs)
            error = None
        except Exception as err:  # one broken case must not stop the others
            log.exception("%s: failed", path.name)
            error = f"{type(err).__name__}: {err}"
        report = CaseReport(path.stem, classes, prompts, time.perf_counter() - started, error)
        log.info("%s: %d classes, %d prompts replayed, %.1f s%s", report.name, report.classes, report.prompts,
                 report.seconds, "" if error is None else f" FAILED ({error})")
        reports.append(report)
    return reports
