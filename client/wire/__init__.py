"""The wire contract of the service, shared by the SDK and the server: standard library and numpy only.

This is the lower layer: the server (``app``) imports it, it imports nothing from ``app``, so the SDK's
distribution installs without torch, pydantic or the web framework. What the server validates with pydantic
(requests, replies, stream messages) it validates with the rules of ``rules``; its reply models are checked
field by field against the dataclasses of ``replies`` and ``messages`` by ``tests/sdk/test_wire_drift.py``.

Modules:
    paths     route templates, header names, form fields, WebSocket message types and close codes, limits
    errors    the stable error codes and their HTTP status; the "field: problem" message convention
    vocab     refine and region modes, step names, mask formats, overlap rules
    rules     the field rules of every prompt request ("box: z1 < z0"), run by the SDK before sending and
              by the server's request models
    replies   the JSON replies (session created / info, prompt reply) as frozen dataclasses
    messages  the JSON messages of the WebSocket stream as frozen dataclasses
    frames    the binary diff frame codec, documented byte by byte in docs/wire-format.md
"""
