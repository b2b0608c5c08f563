"""The server's side of the wire contract: the pydantic models it validates requests with and publishes in
OpenAPI, over the SDK's wire layer (``client.wire``: constants, vocabulary, field rules, frame codec), which
is defined there once and imported here, never the other way round.

Only pydantic, the standard library and ``client.wire`` are imported here (``frames`` adds numpy), so the
schemas load without torch or the web framework.

Modules:
    paths     ``client.wire.paths`` re-exported: route templates, header names, stream message types and
              close codes, limits
    errors    the error body ``{"error": {"code", "message", "field"}}``; codes and statuses from ``client.wire``
    sessions  session creation / info replies
    prompts   box / clicks / text requests (``client.wire.rules`` in their validators), the prompt reply
    regions   scribble / lasso requests
    diffs     the JSON messages of the WebSocket stream (hello, resync, error, ...)
    frames    ``client.wire.frames`` re-exported: the binary diff frame codec, docs/wire-format.md
"""
