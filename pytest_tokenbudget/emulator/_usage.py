"""The usage the emulator reports beyond the cache counts: server tool requests, ``iterations``,
``inference_geo`` and context editing's ``applied_edits``.

Sources: Anthropic docs (pricing, compaction, advisor tool, context editing) and the SDK's types
(``Usage``, ``BetaUsage.iterations``, ``BetaContextManagementResponse``). The emulator does not
run compaction, advisors or context editing itself: a test scripts what the API would report
(:meth:`Reply.with_iterations`, :meth:`Reply.with_applied_edits`) and the emulator reports it the
way the API does, consistent with the rest of the usage.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ._replies import Reply

__all__ = ["context_management_of", "report_usage"]

# Server tools whose requests the API counts in usage.server_tool_use (SDK ``ServerToolUsage``).
_SERVER_TOOL_COUNTS = {"web_search": "web_search_requests", "web_fetch": "web_fetch_requests"}
_COUNTS = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens", "output_tokens")
_TTLS = ("ephemeral_5m_input_tokens", "ephemeral_1h_input_tokens")


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _iteration(kind: str, usage: Mapping[str, Any]) -> dict[str, Any]:
    entry: dict[str, Any] = {"type": kind, **{key: _int(usage.get(key)) for key in _COUNTS}}
    creation = usage.get("cache_creation")
    if isinstance(creation, Mapping):
        entry["cache_creation"] = {ttl: _int(creation.get(ttl)) for ttl in _TTLS}
    return entry


def report_usage(
    usage: dict[str, Any], content: Sequence[Mapping[str, Any]], body: Mapping[str, Any], reply: Reply
) -> None:
    """Add to ``usage`` (the final sampling's counts, as the cache simulation gave them) what the
    API reports besides.

    - ``server_tool_use``: one ``web_search_requests`` / ``web_fetch_requests`` per
      ``server_tool_use`` block of that tool in the reply's content (present when there is one).
    - ``inference_geo``: the request's, echoed (absent when not asked; the API then reports the
      workspace default, which the emulator does not know).
    - ``iterations``: the scripted entries, then one ``message`` entry for the final sampling. The
      top level is the sum of the ``message`` entries (observed on real recordings), so scripted
      ``message`` entries (earlier server-tool iterations) are added to the top-level counts;
      ``compaction`` and ``advisor_message`` entries are not (they are billed outside it).
    """
    searches = {name: 0 for name in _SERVER_TOOL_COUNTS.values()}
    for block in content:
        if block.get("type") == "server_tool_use" and block.get("name") in _SERVER_TOOL_COUNTS:
            searches[_SERVER_TOOL_COUNTS[str(block["name"])]] += 1
    if any(searches.values()):
        usage["server_tool_use"] = searches
    if isinstance(body.get("inference_geo"), str):
        usage["inference_geo"] = body["inference_geo"]
    if not reply.iterations:
        return
    final = _iteration("message", usage)
    entries = [dict(entry) for entry in reply.iterations]
    for entry in entries:
        if entry.get("type") != "message":
            continue
        for key in _COUNTS:
            usage[key] = _int(usage.get(key)) + _int(entry.get(key))
        creation = entry.get("cache_creation")
        if isinstance(creation, Mapping) and isinstance(usage.get("cache_creation"), dict):
            for ttl in _TTLS:
                usage["cache_creation"][ttl] = _int(usage["cache_creation"].get(ttl)) + _int(creation.get(ttl))
    usage["iterations"] = [*entries, final]


def context_management_of(reply: Reply) -> dict[str, Any] | None:
    """The response's ``context_management`` for the reply's scripted edits, else ``None``."""
    if not reply.applied_edits:
        return None
    return {"applied_edits": [dict(edit) for edit in reply.applied_edits]}
