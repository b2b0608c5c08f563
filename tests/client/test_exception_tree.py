"""The SDK raises only what its docstring promises: the exception tree in ``client.__doc__`` is exactly the
exported ``SegError`` classes with their real bases, and every ``raise`` in ``client/`` raises one of them."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import httpx
import pytest

import client
from client import Client, SegError, TransportError, UnexpectedReplyError, ValidationError

CLIENT_DIR = Path(client.__file__).parent
_TREE_LINE = re.compile(r"^(?P<indent>[ │]*)(?:[├└]── )?(?P<name>[A-Z]\w*Error)\b")
_ERROR_FACTORIES = {"error_from_reply", "_open_error", "_closed_error"}
"""Functions whose result the SDK raises; each must be annotated to return ``SegError``."""


def _documented_tree() -> dict[str, str | None]:
    """Class name -> its parent in the docstring's tree (None for the root)."""
    doc = client.__doc__ or ""
    block = doc[doc.index("    SegError\n") :]
    parents: dict[str, str | None] = {}
    stack: list[tuple[int, str]] = []
    for line in block.splitlines():
        match = _TREE_LINE.match(line[4:])
        if match is None:
            if line.strip() and not line.strip().startswith("│"):
                break  # the tree ended
            continue
        depth = len(match.group("indent")) // 4 + (0 if line[4:].startswith("SegError") else 1)
        while stack and stack[-1][0] >= depth:
            stack.pop()
        parents[match.group("name")] = stack[-1][1] if stack else None
        stack.append((depth, match.group("name")))
    return parents


def _exported_errors() -> dict[str, type[SegError]]:
    return {name: getattr(client, name) for name in client.__all__
            if isinstance(getattr(client, name), type) and issubclass(getattr(client, name), SegError)}


def test_the_documented_tree_is_the_exported_classes_with_their_bases() -> None:
    tree = _documented_tree()
    exported = _exported_errors()
    assert set(tree) == set(exported), "client/__init__ docstring and exports disagree"
    assert tree["SegError"] is None
    for name, parent in tree.items():
        if parent is not None:
            assert parent in [base.__name__ for base in exported[name].__mro__[1:]], f"{name} is no {parent}"
    for name, cls in exported.items():  # a second SegError base (SessionClosedError) is named in the text
        for base in cls.__bases__:
            if issubclass(base, SegError) and base.__name__ != tree[name]:
                assert re.search(rf"{name}\b.*also a {base.__name__}", client.__doc__ or ""), (name, base)


def _raises() -> list[tuple[str, ast.Raise]]:
    found = []
    for path in sorted(CLIENT_DIR.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        found += [(f"{path.name}:{node.lineno}", node) for node in ast.walk(tree) if isinstance(node, ast.Raise)]
    return found


def _factory_annotations() -> dict[str, str]:
    out = {}
    for path in sorted(CLIENT_DIR.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef) and node.name in _ERROR_FACTORIES and node.returns is not None:
                out[node.name] = ast.unparse(node.returns)
    return out


def _raised_names(expr: ast.expr | None) -> list[str]:
    """What a ``raise`` expression raises: class names, ``factory()`` or ``self._error`` markers."""
    if expr is None:
        return ["<bare raise>"]
    if isinstance(expr, ast.BoolOp):  # ``self._error or _closed_error(exc)``
        return [name for value in expr.values for name in _raised_names(value)]
    if isinstance(expr, ast.Call):
        expr = expr.func
    if isinstance(expr, ast.Name):
        return [expr.id + ("()" if expr.id in _ERROR_FACTORIES else "")]
    return [ast.unparse(expr)]


def test_every_raise_in_the_sdk_raises_a_documented_error() -> None:
    documented = set(_documented_tree())
    factories = _factory_annotations()
    assert factories == dict.fromkeys(_ERROR_FACTORIES, "SegError")
    raises = _raises()
    assert len(raises) > 20  # the walk sees the SDK's code
    for where, node in raises:
        for name in _raised_names(node.exc):
            ok = name in documented or name.removesuffix("()") in factories or name == "self._error"
            assert ok, f"{where}: raises {name}, which is not in the documented exception tree"


def test_self_error_holds_a_seg_error() -> None:
    source = (CLIENT_DIR / "_stream.py").read_text(encoding="utf-8")
    assert re.search(r"^\s+_error: SegError \| None$", source, re.MULTILINE)


# --- behaviour the tree promises, over a mock transport (the real-server cases are in tests/e2e) --------


def test_unknown_mask_format_is_a_validation_error_before_any_request() -> None:
    sent: list[httpx.Request] = []
    transport = httpx.MockTransport(lambda request: sent.append(request) or httpx.Response(500))
    with Client("http://segserver.test", transport=transport) as c:
        session = c.session("s1", "t")
        for call in (lambda: session.download_mask(1, "png"), lambda: session.download_segmentation("tiff")):
            with pytest.raises(ValidationError) as info:
                call()
            assert info.value.field == "format" and "npz" in info.value.message and info.value.status is None
    assert sent == []


def test_missing_volume_file_is_a_validation_error(tmp_path: Path) -> None:
    with Client("http://segserver.test", transport=httpx.MockTransport(lambda r: httpx.Response(500))) as c:
        with pytest.raises(ValidationError, match="volume: cannot read") as info:
            c.create_session(tmp_path / "missing.nii.gz")
    assert info.value.field == "volume"


@pytest.mark.parametrize("content", [b"<html>proxy error page</html>", b'{"session_id": 3}'])
def test_an_unreadable_success_reply_is_an_unexpected_reply_error(content: bytes) -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(200, content=content))
    with Client("http://segserver.test", transport=transport) as c, pytest.raises(UnexpectedReplyError) as info:
        c.session("s1", "t").info()
    assert info.value.status == 200 and "SessionInfo" in info.value.message


def test_an_undecodable_reply_is_a_transport_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b"not gzip at all", headers={"Content-Encoding": "gzip"})

    with Client("http://segserver.test", transport=httpx.MockTransport(handler)) as c:
        with pytest.raises(TransportError, match="GET /v1/sessions/s1"):
            c.session("s1", "t").info()
