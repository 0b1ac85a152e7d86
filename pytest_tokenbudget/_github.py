"""A sticky pull request comment through GitHub's REST API (stdlib ``urllib``, no dependency).

The comment is found by a hidden marker (an HTML comment GitHub does not render) among the pull
request's issue comments, and edited in place on each push; created only when none carries the
marker. Everything comes from the variables a runner sets: ``GITHUB_API_URL``,
``GITHUB_REPOSITORY``, ``GITHUB_EVENT_PATH`` (the ``pull_request`` event: its number, and whether
the head is a fork), ``GITHUB_TOKEN`` (the workflow's token: ``pull-requests: write``).

Posting never raises: a comment that cannot be posted (a fork's read-only token, no token, not a
pull request, the API down) is skipped with the reason, and the job's result is the gate's alone.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["MARKER", "Posted", "PullRequest", "post_sticky_comment", "pull_request_from_env"]

MARKER = "<!-- pytest-tokenbudget:comment -->"
"""The hidden first line that identifies our comment."""

_TIMEOUT = 20.0
_PAGES = 20  # 100 comments a page: a pull request with more than 2,000 comments gets a new one


@dataclass(frozen=True)
class PullRequest:
    """Where to post: the API, the repository (``owner/name``), the pull request, the token."""

    api_url: str
    repository: str
    number: int
    token: str


@dataclass(frozen=True)
class Posted:
    """What happened: ``created``, ``updated`` or ``skipped``, with the comment's URL or the reason."""

    action: str
    detail: str


def pull_request_from_env(env: Mapping[str, str]) -> PullRequest | Posted:
    """The pull request to comment on, or why there is none (a :class:`Posted` ``skipped``)."""
    event_path = env.get("GITHUB_EVENT_PATH")
    if not event_path:
        return Posted("skipped", "not running in GitHub Actions (GITHUB_EVENT_PATH is not set)")
    try:
        event = json.loads(Path(event_path).read_text("utf-8"))
    except (OSError, ValueError) as err:
        return Posted("skipped", f"the event file {event_path} cannot be read: {err}")
    pull = event.get("pull_request") if isinstance(event, dict) else None
    if not isinstance(pull, dict) or not isinstance(pull.get("number"), int):
        name = env.get("GITHUB_EVENT_NAME") or "this"
        return Posted("skipped", f"not a pull request ({name} event): the job summary has the report")
    repository = env.get("GITHUB_REPOSITORY") or str(_get(pull, "base", "repo", "full_name") or "")
    head = _get(pull, "head", "repo", "full_name")
    base = _get(pull, "base", "repo", "full_name")
    if head and base and head != base and env.get("GITHUB_EVENT_NAME") != "pull_request_target":
        return Posted(
            "skipped",
            f"pull request from the fork {head}: the workflow's token is read-only there, so no comment "
            "(the job summary has the report)",
        )
    token = env.get("GITHUB_TOKEN")
    if not token:
        return Posted(
            "skipped", "no GITHUB_TOKEN: pass `github-token: ${{ github.token }}` (the job summary has the report)"
        )
    api = (env.get("GITHUB_API_URL") or "https://api.github.com").rstrip("/")
    return PullRequest(api, repository, int(pull["number"]), token)


def _get(data: Any, *keys: str) -> Any:
    for key in keys:
        data = data.get(key) if isinstance(data, dict) else None
    return data


class _Failed(Exception):
    def __init__(self, status: int | None, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def _call(pr: PullRequest, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
    request = urllib.request.Request(
        f"{pr.api_url}{path}",
        data=json.dumps(body).encode() if body is not None else None,
        method=method,
        headers={
            "Accept": "application/vnd.github+json",
            "Authorization": f"Bearer {pr.token}",
            "X-GitHub-Api-Version": "2022-11-28",
            "User-Agent": "pytest-tokenbudget",
            **({"Content-Type": "application/json"} if body is not None else {}),
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=_TIMEOUT) as response:
            raw = response.read()
    except urllib.error.HTTPError as err:
        detail = err.read().decode("utf-8", "replace")[:300]
        raise _Failed(err.code, f"{method} {path}: HTTP {err.code} {detail}".strip()) from None
    except (urllib.error.URLError, OSError) as err:
        raise _Failed(None, f"{method} {path}: {err}") from None
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        raise _Failed(None, f"{method} {path}: the answer is not JSON") from None


def post_sticky_comment(pr: PullRequest, body: str, marker: str = MARKER) -> Posted:
    """Create the pull request's comment, or update the one carrying ``marker``; never raises."""
    text = body if body.startswith(marker) else f"{marker}\n{body}"
    base = f"/repos/{pr.repository}/issues"
    try:
        found: int | None = None
        for page in range(1, _PAGES + 1):
            comments = _call(pr, "GET", f"{base}/{pr.number}/comments?per_page=100&page={page}")
            if not isinstance(comments, list):
                break
            found = next(
                (c["id"] for c in comments if isinstance(c, dict) and marker in str(c.get("body") or "")), None
            )
            if found is not None or len(comments) < 100:
                break
        if found is not None:
            answer = _call(pr, "PATCH", f"{base}/comments/{found}", {"body": text})
            return Posted("updated", str(_get(answer, "html_url") or f"comment {found}"))
        answer = _call(pr, "POST", f"{base}/{pr.number}/comments", {"body": text})
        return Posted("created", str(_get(answer, "html_url") or "comment"))
    except _Failed as failed:
        if failed.status in (401, 403, 404):
            why = (
                "the token cannot write to the pull request (read-only: a fork, or the job lacks "
                "`permissions: pull-requests: write`)"
            )
            return Posted("skipped", f"{why}: {failed.reason}")
        return Posted("skipped", f"the comment could not be posted: {failed.reason}")
