"""Protocol constants shared by routes and SDK: route templates, header names, stream codes, limits.

Route templates use ``str.format`` fields ``{session_id}`` and ``{object_id}``; FastAPI accepts the same
templates as path strings, so both sides build URLs from one place.
"""

from __future__ import annotations

from enum import IntEnum

API_VERSION = "v1"
API_PREFIX = "/v1"

# --- routes (full paths, including the prefix) -------------------------------------------------------
HEALTHZ = "/healthz"
READYZ = "/readyz"
METRICS = "/metrics"

SESSIONS = API_PREFIX + "/sessions"
SESSION = SESSIONS + "/{session_id}"
SESSIONS_FROM_DICOMWEB = SESSIONS + "/dicomweb"  # a session from a series on the DICOMweb server
SESSION_DICOMWEB_STORE = SESSION + "/dicomweb/store"  # STOW-RS of the session's DICOM SEG
SEGMENTATION = SESSION + "/segmentation"
STREAM = SESSION + "/stream"
OBJECTS = SESSION + "/objects"
OBJECT = OBJECTS + "/{object_id}"
OBJECT_BOX = OBJECT + "/box"
OBJECT_CLICKS = OBJECT + "/clicks"
OBJECT_TEXT = OBJECT + "/text"
OBJECT_UNDO = OBJECT + "/undo"
OBJECT_RESET = OBJECT + "/reset"
OBJECT_MASK = OBJECT + "/mask"
OBJECT_SCRIBBLE = OBJECT + "/scribble"
OBJECT_LASSO = OBJECT + "/lasso"

# MONAI Label compatibility (outside /v1: OHIF's and Slicer's clients build these from the server URL).
MONAILABEL_INFO = "/info/"
MONAILABEL_INFER = "/infer/{model}"
MONAILABEL_SESSIONS = "/session/"
MONAILABEL_SESSION = "/session/{session_id}"
MONAILABEL_DATASTORE = "/datastore/"
MONAILABEL_DATASTORE_IMAGE = "/datastore/image"
MONAILABEL_DATASTORE_LABEL = "/datastore/label"
MONAILABEL_ACTIVELEARNING = "/activelearning/{strategy}"
MONAILABEL_TRAIN = "/train/"
MONAILABEL_PREFIXES = ("/info", "/infer", "/session", "/datastore", "/activelearning", "/train")
"""Path prefixes of the MONAI Label routes (the gate matches on these)."""

# --- headers, form fields, query parameters ----------------------------------------------------------
AUTHORIZATION_HEADER = "Authorization"
BEARER_PREFIX = "Bearer "
RETRY_AFTER_HEADER = "Retry-After"
OBJECT_VERSION_HEADER = "X-Object-Version"
"""Sent with a mask download: the object's version the mask corresponds to."""
REQUEST_ID_HEADER = "X-Request-ID"
IDEMPOTENCY_KEY_HEADER = "Idempotency-Key"
"""Optional on every mask-changing prompt: a client-chosen id; a retry with the same id gets the recorded
reply and is never applied twice (docs/service.md, "Exactly-once prompts")."""
IDEMPOTENCY_KEY_PATTERN = r"^[A-Za-z0-9_.:-]{1,128}$"
SESSION_ID_HEADER = "X-Session-Id"
"""Set by the router in front of several replicas on ``POST /v1/sessions``: the id the new session gets
(read only with ``Settings.trust_session_id_header``)."""

UPLOAD_FILE_FIELD = "file"
"""Multipart field of ``POST /v1/sessions`` and ``PUT .../mask`` holding the file."""
UPLOAD_MODALITY_FIELD = "modality"
UPLOAD_SPACING_ORDER_FIELD = "spacing_order"
"""Optional form field for a CVPR25 ``.npz`` upload: "auto" (default), "zyx" or "xyz" (see app.io.volumes)."""
UPLOAD_EXCLUSIVE_OBJECTS_FIELD = "exclusive_objects"
"""Optional form field of a session creation: "true" / "false" (default: the server's setting)."""
FORMAT_QUERY = "format"
"""Query parameter choosing the mask download format (``MaskFormat``)."""
OVERLAP_QUERY = "overlap"
"""Query parameter of the segmentation download choosing how overlapping objects are resolved (``OverlapRule``)."""
STREAM_TOKEN_QUERY = "token"
"""Browsers cannot set headers on a WebSocket: the stream also accepts ``?token=<token>``."""

# --- npz keys ----------------------------------------------------------------------------------------
MASK_NPZ_KEY = "mask"
"""Key of the uint8 (D, H, W) 0/1 array in an object mask ``.npz`` (download and ``PUT .../mask`` upload)."""
SEGMENTATION_NPZ_KEY = "segs"
"""Key of the (D, H, W) label map in a segmentation ``.npz`` (value = object id; the challenge output key)."""

# --- limits checked at the edge (bounds against the volume are checked by the server) -----------------
MIN_OBJECT_ID = 1
"""Object ids start at 1 so that 0 stays background in the segmentation label map."""
MAX_OBJECT_ID = 65535
"""Object ids fit a uint16 label map."""
MAX_CLICKS_PER_REQUEST = 64


# --- WebSocket stream --------------------------------------------------------------------------------
class StreamMessageType:
    """``type`` values of the JSON (text) messages on the stream; binary messages are diff frames."""

    HELLO = "hello"  # server -> client, first message: session id, shape, current object versions
    RESYNC = "resync"  # client -> server: send me a snapshot of an object (or all)
    PING = "ping"  # client -> server
    PONG = "pong"  # server -> client
    REMOVED = "removed"  # server -> client: an object was deleted
    ERROR = "error"  # server -> client: a message was rejected (the connection stays open)


class StreamCloseCode(IntEnum):
    """WebSocket close codes (4000-4999 are application codes; 4xxx mirrors the HTTP status)."""

    NORMAL = 1000
    GOING_AWAY = 1001  # server shutting down
    MESSAGE_TOO_BIG = 1009  # a client message past the server's WebSocket size limit (closed by the protocol layer)
    INTERNAL_ERROR = 1011
    BAD_MESSAGE = 4400  # repeated malformed messages
    UNAUTHORIZED = 4401  # missing or wrong token
    NOT_FOUND = 4404  # unknown session
    SESSION_EXPIRED = 4410  # session expired or was closed while streaming
    RATE_LIMITED = 4429  # over the caller's rate limit
    SERVER_BUSY = 4503  # too many subscribers

# Server API keys (on top of the per-session bearer token): header, or query parameter for browser WebSockets.
API_KEY_HEADER = "X-API-Key"
API_KEY_QUERY = "api_key"
