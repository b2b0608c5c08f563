"""The one error table: every domain error has a status, a code and a close code, consistent with the schema."""

from __future__ import annotations

import json

import app.errors as domain
from app.api.errors import ERROR_TABLE, error_response, mapping_for
from app.schemas.errors import ERROR_STATUS, ErrorBody


def test_every_domain_error_is_mapped() -> None:
    classes = [c for c in vars(domain).values()
               if isinstance(c, type) and issubclass(c, domain.ServiceError) and c is not domain.ServiceError]
    assert set(classes) == set(ERROR_TABLE)
    for cls, m in ERROR_TABLE.items():
        assert m.status == ERROR_STATUS[m.code], cls
        assert 4000 <= m.close_code < 5000 or m.close_code in (1011,), cls


def test_statuses_of_the_contract() -> None:
    expected = {domain.InvalidInput: 422, domain.Unauthorized: 401, domain.SessionNotFound: 404,
                domain.SessionExpired: 410, domain.CapacityExceeded: 503, domain.PayloadTooLarge: 413,
                domain.ObjectNotFound: 404, domain.NothingToUndo: 409}
    for cls, status in expected.items():
        assert ERROR_TABLE[cls].status == status


def test_error_response_body_and_headers() -> None:
    r = error_response(domain.CapacityExceeded("capacity: full", retry_after_s=9))
    assert r.status_code == 503 and r.headers["Retry-After"] == "9"
    body = ErrorBody.model_validate(json.loads(r.body))
    assert body.error.code == "server_busy" and body.error.message == "capacity: full"
    r = error_response(domain.InvalidInput("box: z1 < z0", field="box"))
    assert json.loads(r.body) == {"error": {"code": "validation_error", "message": "box: z1 < z0", "field": "box"}}
    assert error_response(domain.Unauthorized("authorization: missing")).headers["WWW-Authenticate"] == "Bearer"


def test_subclasses_inherit_their_mapping() -> None:
    class Special(domain.SessionExpired):
        pass

    assert mapping_for(Special("x")).status == 410
