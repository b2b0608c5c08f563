"""CVPR 2025 interactive 3D segmentation challenge I/O: ``inputs/*.npz`` prompts -> ``outputs/*.npz`` ``segs``.

    sh predict.sh                                     # /workspace/inputs -> /workspace/outputs (the challenge)
    python -m challenge --inputs in/ --outputs out/ --config compact --mode both

Every round runs in a fresh process; each object's state is rebuilt by replaying its prompts (box, then its
clicks in ``clicks_order``) on a session with a fixed seed, so round k answers exactly as a live session would.
Modules: ``case`` (reading an input file into typed prompts), ``predict`` (replay, composition, writing).
"""

from challenge.case import ChallengeCase, ClassPrompts, read_case
from challenge.predict import CaseReport, predict_folder, replay_case, write_segs

__all__ = ["CaseReport", "ChallengeCase", "ClassPrompts", "predict_folder", "read_case", "replay_case", "write_segs"]
