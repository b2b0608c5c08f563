"""The protocol constants, as the server imports them: defined once in ``client.wire.paths``.

The SDK's distribution is the lower layer (it installs without torch or pydantic); the server depends on it,
never the other way round, so route templates, header names and close codes have that one home.
"""

from client.wire.paths import *  # noqa: F403  (the whole module, re-exported under its server-side name)
