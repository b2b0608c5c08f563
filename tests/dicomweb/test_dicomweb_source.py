"""DicomwebSource without a server: credentials in the URL become the session's basic auth, UIDs are checked."""

from __future__ import annotations

import pytest

from app.io.dicomweb import DicomwebSource


def test_credentials_in_the_url_go_to_the_session_not_the_request_urls() -> None:
    source = DicomwebSource("http://us%40er:p%3Ass@127.0.0.1:8042/dicom-web/")
    assert source._client.base_url == "http://127.0.0.1:8042/dicom-web"
    assert source._client._session.auth == ("us@er", "p:ss")


@pytest.mark.parametrize("uid", ["", "1.2.x", "1" * 65, "1.2.3&x=1"])
def test_a_series_uid_must_be_a_dicom_uid(uid: str) -> None:
    with pytest.raises(ValueError, match="^image: "):
        DicomwebSource("http://127.0.0.1:9/dicom-web").study_of_series(uid)
