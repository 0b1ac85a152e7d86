"""Our format through vcrpy's interfaces: :data:`vcr_serializer` and :class:`TokenBudgetPersister`."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .._atomic import write_atomic
from ._model import Body, Interaction
from ._read import _decompress, parse_cassette
from ._write import dump_cassette


def _from_vcr_dict(request: Mapping[str, Any], response: Mapping[str, Any], index: int) -> Interaction:
    headers = {str(k).lower(): (v[0] if isinstance(v, list) else v) for k, v in (request.get("headers") or {}).items()}
    body = request.get("body")
    raw = (
        body if isinstance(body, bytes) else (body or "").encode("utf-8") if isinstance(body, str | type(None)) else b""
    )
    response_headers = {
        str(k).lower(): [str(x) for x in (v if isinstance(v, list) else [v])]
        for k, v in (response.get("headers") or {}).items()
    }
    response_raw = (response.get("body") or {}).get("string") or b""
    if isinstance(response_raw, str):
        response_raw = response_raw.encode("utf-8")
    response_raw = _decompress(response_raw, response_headers.pop("content-encoding", []), Path("<vcrpy>"), index)
    status = response.get("status") or {}
    return Interaction(
        index=index,
        method=str(request.get("method", "GET")),
        uri=str(request.get("uri", "")),
        request_headers={k: str(v) for k, v in headers.items()},
        request_body=Body(raw),
        status=int(status.get("code", 200)),
        reason=str(status.get("message") or ""),
        response_headers=response_headers,
        response_body=Body(response_raw),
    )


def _to_vcr_dict(interaction: Interaction) -> dict[str, Any]:
    return {
        "request": {
            "method": interaction.method,
            "uri": interaction.uri,
            "body": interaction.request_body.raw,
            "headers": {k: [v] for k, v in interaction.request_headers.items()},
        },
        "response": {
            "status": {"code": interaction.status, "message": interaction.reason or "OK"},
            "headers": {k: list(v) for k, v in interaction.response_headers.items()},
            "body": {"string": interaction.response_body.raw},
        },
    }


class _VcrSerializer:
    """Our format through vcrpy's serializer interface.

    Register it to read or write our cassettes with plain vcrpy::

        my_vcr.register_serializer("tokenbudget", pytest_tokenbudget.cassette.vcr_serializer)
        my_vcr.use_cassette("x.yaml", serializer="tokenbudget")
    """

    def deserialize(self, cassette_string: str) -> dict[str, Any]:
        cassette = parse_cassette(cassette_string)
        return {"version": 1, "interactions": [_to_vcr_dict(i) for i in cassette.interactions]}

    def serialize(self, cassette_dict: Mapping[str, Any]) -> str:
        interactions = [
            _from_vcr_dict(item["request"], item["response"], index)
            for index, item in enumerate(cassette_dict.get("interactions", []))
        ]
        return dump_cassette(interactions)


vcr_serializer = _VcrSerializer()


class TokenBudgetPersister:
    """A vcrpy persister: atomic writes, and a corrupt file is an error rather than "no cassette"."""

    @classmethod
    def load_cassette(cls, cassette_path: str | Path, serializer: Any) -> tuple[list[Any], list[Any]]:
        from vcr.persisters.filesystem import CassetteNotFoundError
        from vcr.serialize import deserialize

        path = Path(cassette_path)
        if not path.is_file():
            raise CassetteNotFoundError()
        return deserialize(path.read_text(encoding="utf-8"), serializer)  # type: ignore[no-any-return]

    @staticmethod
    def save_cassette(cassette_path: str | Path, cassette_dict: Mapping[str, Any], serializer: Any) -> None:
        from vcr.serialize import serialize

        write_atomic(Path(cassette_path), serialize(cassette_dict, serializer))
