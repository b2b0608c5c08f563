"""The shared, stateless predictor: verbs on an explicit ``SessionState`` (SAM 2's video predictor shape).

    predictor = build_predictor("compact", weights=None, device="cpu")
    state = predictor.init_state(volume, spacing)            # encodes once, caches embeddings
    change = predictor.add_box(state, 1, [z0, y0, x0, z1, y1, x1])
    changes = predictor.add_clicks(state, 1, [[z, y, x]], [1], mode="both")
    predictor.undo(state, 1); predictor.reset(state, 1)

Every verb validates its arguments first (``ValueError`` naming the argument, state untouched), then
returns exactly what changed in the object's binary mask (``Change``). Blocking: call it off the event loop.
"""

from __future__ import annotations

# Implementation follows in this module (API first so the service and evaluation can be built against it).
