"""The wire contract shared by the server and the SDK: pydantic models and protocol constants.

Only pydantic and the standard library are imported here (``frames`` adds numpy, and is imported on demand),
so ``client`` can depend on this package without pulling in torch or the web framework.

Modules:
    paths     route templates, header names, WebSocket message types and close codes, limits
    errors    the error body ``{"error": {"code", "message", "field"}}`` and the code -> HTTP status table
    sessions  session creation / info replies
    prompts   box / clicks requests, the prompt reply, mask formats
    diffs     the JSON messages of the WebSocket stream (hello, resync, error, ...)
    frames    the binary diff frame codec (numpy), documented byte by byte in docs/wire-format.md
"""
