"""Property-based fuzzing of every HTTP operation in the OpenAPI document (schemathesis), in-process.

The app is the real one (real lifespan, the ``segvol-test`` model with random weights, in-process store),
reached through schemathesis' ASGI transport. Session routes would only ever answer 401/404 to generated
ids and tokens, so every case on a ``{session_id}`` route is pointed at a real session created here, with
its bearer token: the generated bodies, queries and object ids then reach the validation code. Valid
object ids are folded onto a few ids so the fuzzer cannot fill device memory with objects.

Checks on every reply: no 5xx, status code documented, content type and body conform to the schema,
declared headers present, invalid data rejected. On top: a 4xx reply on a session route leaves the
session exactly as it was (its objects, their versions, voxel counts and bboxes).

Not checked: ``positive_data_acceptance`` (schema-valid bodies are often refused on purpose: a box outside
the volume is valid JSON but a 422, which the schema cannot express without knowing the volume).

Bounded for CI: a fixed seed, few examples per operation, no deadline. A longer run against a live server
is documented in docs/reliability.md.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import requests

# A RuntimeWarning in the app (a float cast past int64, ...) fails the case: it hides undefined behaviour.
pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is not installed (pip install -e .[dev])")

from schemathesis.python import asgi  # noqa: E402

from app.main import create_app  # noqa: E402
from app.schemas import paths  # noqa: E402
from tests.api.conftest import test_settings  # noqa: E402
from tests.volumes import npz_bytes, synthetic_volume  # noqa: E402

MAX_EXAMPLES = 15
SEED = 20261129
FUZZ_OBJECT_IDS = 3  # valid object ids are folded onto 1..3

CONFIG = schemathesis.config.SchemathesisConfig.from_dict({
    "seed": SEED,
    "generation": {"max-examples": MAX_EXAMPLES, "deterministic": True, "mode": "all"},
    "phases": {"stateful": {"enabled": False}},
    "checks": {"positive_data_acceptance": {"enabled": False}},
})


@dataclass
class LiveSession:
    session_id: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {paths.AUTHORIZATION_HEADER: f"{paths.BEARER_PREFIX}{self.token}"}


class SessionPool:
    """The real session fuzzed cases are pointed at; a new one replaces it once a case deleted it."""

    def __init__(self, client: requests.Session) -> None:
        self.client = client
        self.current: LiveSession | None = None
        self.created = 0
        self.replies: Counter[tuple[str, int]] = Counter()  # (operation, status) -> count

    def get(self) -> LiveSession:
        if self.current is None:
            content = npz_bytes(imgs=synthetic_volume(), spacing=np.asarray((2.0, 1.0, 1.0)))
            r = self.client.post(f"http://{asgi.HOST}{paths.SESSIONS}", files={"file": ("v.npz", content)},
                                 data={"spacing_order": "zyx"})
            assert r.status_code == 201, r.text
            body = r.json()
            self.current = LiveSession(body["session_id"], body["token"])
            self.created += 1
            s = self.current
            box = self.client.post(f"http://{asgi.HOST}{paths.OBJECT_BOX.format(session_id=s.session_id, object_id=1)}",
                                   json={"box": [6, 20, 20, 17, 43, 43]}, headers=s.headers)
            assert box.status_code == 200, box.text
        return self.current

    def state(self, session: LiveSession) -> Any:
        """The session's objects (id, version, voxels, bbox): what a refused request must not change."""
        r = self.client.get(f"http://{asgi.HOST}{paths.SESSION.format(session_id=session.session_id)}",
                            headers=session.headers)
        if r.status_code != 200:
            return r.status_code
        return r.json()["objects"]


@pytest.fixture(scope="module")
def fuzz_app(service_predictor: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    # MONAI Label routes on, with a datastore, so they are fuzzed rather than all answering "off" (404).
    settings = test_settings(max_sessions=64, monailabel_enabled=True,
                             monailabel_datastore=tmp_path_factory.mktemp("fuzz-datastore"))
    app = create_app(settings, predictor=service_predictor)
    yield app
    asgi.shutdown_lifespans()


@pytest.fixture(scope="module")
def api_schema(fuzz_app: Any) -> Any:
    return schemathesis.openapi.from_asgi("/openapi.json", fuzz_app, config=CONFIG)


@pytest.fixture(scope="module")
def pool(fuzz_app: Any) -> Iterator[SessionPool]:
    pool = SessionPool(asgi.get_client(fuzz_app))
    yield pool
    total = sum(pool.replies.values())
    print(f"\nfuzzed {len({op for op, _ in pool.replies})} operations, {total} requests, "
          f"{pool.created} sessions created")
    for (op, status), n in sorted(pool.replies.items()):
        print(f"  {op:<70} {status} x{n}")


schema = schemathesis.pytest.from_fixture("api_schema")


def _point_at(case: Any, session: LiveSession) -> None:
    case.path_parameters["session_id"] = session.session_id
    case.headers = {**(case.headers or {}), **session.headers}
    oid = case.path_parameters.get("object_id")
    if isinstance(oid, int) and not isinstance(oid, bool) and paths.MIN_OBJECT_ID <= oid <= paths.MAX_OBJECT_ID:
        case.path_parameters["object_id"] = 1 + oid % FUZZ_OBJECT_IDS


@schema.parametrize()
def test_openapi_operation(case: Any, pool: SessionPool) -> None:
    session = None
    if case.path.startswith(paths.SESSION):
        session = pool.get()
        _point_at(case, session)
        before = pool.state(session)
    response = case.call()
    pool.replies[(f"{case.method.upper()} {case.path}", response.status_code)] += 1
    case.validate_response(response)
    if session is None:
        return
    if case.method.upper() == "DELETE" and case.path == paths.SESSION and response.status_code == 204:
        pool.current = None
        return
    if 400 <= response.status_code < 500:
        assert pool.state(session) == before, f"{case.method} {case.path} -> {response.status_code} changed the session"
