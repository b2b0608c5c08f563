"""The binary diff frame codec, as the server imports it: defined once in ``client.wire.frames``.

The SDK's distribution is the lower layer (numpy + stdlib); the server encodes with the very code the SDK
decodes with, so the two cannot drift.
"""

from client.wire.frames import *  # noqa: F403  (the whole module, re-exported under its server-side name)
