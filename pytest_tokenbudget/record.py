"""Recording and replaying a test's Anthropic traffic through vcrpy.

vcrpy's patchers intercept every HTTP client it knows (``httpx2``, which the anthropic SDK 1.x
and 2.x use, plain ``httpx``, which 0.x uses, requests, aiohttp...), so one recorder serves every
SDK line; cassettes recorded with one line replay with another (request bodies are compared
parsed, and the ``?beta=true`` query older SDKs add is not part of the matched path). They
hand each request to a cassette object; ours, :class:`Recorder`, decides per request:

* traffic that is not Anthropic's (no ``anthropic-version`` header, not ``*.anthropic.com``)
  passes through untouched and is never recorded;
* in replay, the k-th request of an endpoint is matched to the k-th unplayed recording of that
  endpoint by comparing bytes (O(size), no scan of the whole cassette); a request that differs
  from its recording fails the test with the first difference (JSON path, offset, excerpts), or,
  in ``continue`` mode, gets the recorded response and the departure is noted for the gate;
* a request with no recording fails the test with the command that records it.

Failures are raised as :class:`~pytest_tokenbudget.errors.ReplayInterrupt`, which the SDK's
``except Exception`` retry loop cannot swallow.
"""

from __future__ import annotations

import builtins
import functools
import importlib.util
import json
import os
import re
import shlex
import sys
import threading
import time
import types
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from ._modes import RecordMode
from ._redact import PLACEHOLDER_API_KEY, Redactor
from .cassette import Body, Cassette, Interaction
from .errors import CassetteError, MissingRecording, ReplayInterrupt, RequestMismatch, TokenBudgetError

if TYPE_CHECKING:
    # The cassette reader and writer, the ledger and the prefix comparison load when first
    # needed: a test with no cassette and no API call needs none of them.
    from .ledger import Ledger
    from .prefix import Difference

__all__ = [
    "PLACEHOLDER_API_KEY",
    "Departure",
    "RecordMode",
    "Recorder",
    "Route",
    "SafePersister",
    "accept_command",
    "cassette_path",
    "clear_placeholder_key",
    "count_tokens_live",
    "ledger_of_vcr_cassette",
    "open_recorder",
    "placeholder_key",
    "record_command",
    "replays_only",
    "secrets_from_environment",
    "set_placeholder_key",
    "unrouted_clients",
]

_LOOKAHEAD = 32
_RETRYABLE = frozenset({408, 409, 429})
_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-\[\]=,+@]")


def secrets_from_environment(environ: Mapping[str, str] | None = None) -> set[str]:
    """Values of environment variables that look like credentials (8 characters or more)."""
    return set(Redactor.from_environment(environ).secrets)


def is_anthropic_request(uri: str, headers: Mapping[str, Any]) -> bool:
    """Whether a request goes to the Anthropic API (or an emulator of it)."""
    host = (urlsplit(uri).hostname or "").lower()
    if host == "anthropic.com" or host.endswith(".anthropic.com"):
        return True
    return any(str(name).lower() == "anthropic-version" for name in headers)


@dataclass(frozen=True, slots=True)
class Departure:
    """A request that differs from its recording, replayed anyway (``continue`` mode).

    Attributes:
        exchange: index among the test's exchanges.
        recorded: the recording it was matched to.
        request: the request body actually sent.
        difference: where it first differs (``None`` when a body is not JSON).
    """

    exchange: int
    recorded: Interaction
    request: Body
    difference: Difference | None


@dataclass(frozen=True, slots=True)
class _Decision:
    play: Interaction | None
    started: float
    departure: Departure | None = None


_ABSENT = object()

# vcrpy's patcher groups and the module each needs.
_CLIENT_MODULES = {
    "requests": "requests",
    "boto3": "botocore",
    "urllib3": "urllib3",
    "httplib2": "httplib2",
    "tornado": "tornado",
    "aiohttp": "aiohttp",
    "httpx": "httpx",
    "httpx2": "httpx2",
}


# Modules whose import makes HTTP traffic possible: what vcrpy patches (http.client included).
_CLIENT_IMPORTS = ("http.client", *_CLIENT_MODULES.values())


def _initialised(name: str) -> bool:
    module = sys.modules.get(name)
    # importlib marks a module's spec "_initializing" while its code runs.
    return module is not None and not getattr(getattr(module, "__spec__", None), "_initializing", False)


def _clients_loaded() -> bool:
    """Whether an HTTP client library is imported (and done importing)."""
    modules = sys.modules
    return any(name in modules and _initialised(name) for name in _CLIENT_IMPORTS)


def _importing() -> bool:
    """Whether some module is still running its code (then building the patches could meet it
    half-initialised)."""
    return any(
        getattr(getattr(module, "__spec__", None), "_initializing", False) for module in list(sys.modules.values())
    )


class _PatchOnImport:
    """Calls ``on_loaded`` as soon as an import statement leaves an HTTP client library imported.

    While installed it wraps ``builtins.__import__``: when an outermost ``import`` statement (of
    the thread) returns, every module it pulled in is fully initialised and bound, so the patches
    can be built safely then. A client loaded without an import statement
    (``importlib.import_module``) is not seen until the next statement: :meth:`missed` tells.
    """

    def __init__(self, on_loaded: Callable[[], None]) -> None:
        self._on_loaded = on_loaded
        self._original: Callable[..., types.ModuleType] = builtins.__import__
        self._local = threading.local()
        self._hook = self._import  # one bound method, compared by identity
        self._modules = 0

    def install(self) -> None:
        self._original = builtins.__import__
        self._modules = len(sys.modules)
        builtins.__import__ = self._hook

    def remove(self) -> None:
        if builtins.__import__ is self._hook:
            builtins.__import__ = self._original

    @property
    def installed(self) -> bool:
        return builtins.__import__ is self._hook

    def missed(self) -> list[str]:
        """Client libraries imported while the patches still wait (so their calls went unrouted)."""
        return [name for name in _CLIENT_IMPORTS if _initialised(name)] if self.installed else []

    def _import(
        self,
        name: str,
        globals: Mapping[str, object] | None = None,
        locals: Mapping[str, object] | None = None,
        fromlist: Sequence[str] | None = (),
        level: int = 0,
    ) -> types.ModuleType:
        local = self._local
        depth = getattr(local, "depth", 0)
        local.depth = depth + 1
        try:
            return self._original(name, globals, locals, fromlist or (), level)
        finally:
            local.depth = depth
            # Most statements run inside tests import nothing new (the module is in sys.modules):
            # only a statement that grew sys.modules can have loaded a client.
            if depth == 0 and len(sys.modules) != self._modules:
                if not (self.installed and _clients_loaded()):
                    self._modules = len(sys.modules)
                elif not _importing():  # else: a module is half-initialised; retry at the next statement
                    self.remove()
                    self._on_loaded()


@functools.cache
def _absent_clients() -> tuple[str, ...]:
    """vcrpy patcher groups whose library is not installed.

    vcrpy tries to import every client library each time it installs its patches, and a failed
    import is not cached: for a suite of thousands of tests the search for absent modules costs
    more than everything else the plugin does. Found once, they are skipped.
    """
    # vcrpy's httpx group also tries these optional transports on every install; an absent one
    # marked None in sys.modules fails its import at once (importlib's documented behaviour).
    for optional in ("httpx_curl_cffi", "pyreqwest"):
        if optional not in sys.modules and importlib.util.find_spec(optional) is None:
            sys.modules[optional] = None  # type: ignore[assignment]
    return tuple(name for name, module in _CLIENT_MODULES.items() if importlib.util.find_spec(module) is None)


def _headers_of(vcr_request: Any) -> dict[str, str]:
    return {str(k).lower(): str(v) for k, v in vcr_request.headers.items()}


def _body_of(vcr_request: Any) -> bytes:
    body = vcr_request.body
    if body is None:
        return b""
    if isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode("utf-8")
    return bytes(getattr(vcr_request, "body_bytes", b"") or b"")


class Recorder:
    """The cassette vcrpy's patchers talk to during one test.

    It implements the part of ``vcr.cassette.Cassette`` that vcrpy's patchers and stubs call
    (``can_play_response_for``, ``play_response``, ``append``, ``write_protected``,
    ``filter_request``), with matching of its own; the calls reach it through the process' one
    :class:`_Dispatcher` while :meth:`patched` is active. vcrpy is imported only when a test runs.

    Args:
        path: the cassette file.
        test: the test's node id (named in errors).
        mode: the record mode.
        loaded: the cassette read from ``path``, if it exists.
        on_mismatch: ``fail`` (default) or ``continue`` (play the recording and note the departure).
        allow_unused: do not complain about recordings the test did not replay.
        record_command: the command line that re-records this test (shown in errors).
        clock: returns the current time; the emulator fixture installs its clock here.
        redactor: the session's redactor (shared by every test, so every report redacts every
            secret any test saw); a fresh one by default.
    """

    def __init__(
        self,
        path: Path,
        *,
        test: str,
        mode: RecordMode,
        loaded: Cassette | None = None,
        on_mismatch: str = "fail",
        allow_unused: bool = False,
        record_command: Callable[[str], str] = lambda mode: f"--token-budget-record={mode}",
        clock: Callable[[], float] = time.time,
        redactor: Redactor | None = None,
    ) -> None:
        self.cassette_path = Path(path)
        self.test = test
        self.mode = mode
        self.loaded = loaded
        self.on_mismatch = on_mismatch
        self.allow_unused = allow_unused
        self.record_command = record_command
        self.clock = clock
        self._redactor = redactor if redactor is not None else Redactor()
        self._read_environment = False
        self.exchanges: list[Interaction] = []
        self.recorded: list[Interaction] = []
        self.departures: list[Departure] = []
        self.errors: list[ReplayInterrupt] = []
        self._bypass = False
        self._ledger: tuple[int, Ledger] | None = None
        self._lock = threading.RLock()
        self._pending: dict[int, _Decision] = {}
        self._queues: dict[tuple[str, str], deque[int]] = {}
        self._played: set[int] = set()
        recordings = loaded.interactions if loaded is not None and mode is not RecordMode.ALL else []
        self._recordings: list[Interaction] = list(recordings)
        for interaction in self._recordings:
            self._queues.setdefault((interaction.method, interaction.path), deque()).append(interaction.index)

    @property
    def redactor(self) -> Redactor:
        """What is redacted from what is recorded: credential-like environment variables (and
        those the config names), read at the test's first request (or save), and the keys,
        passwords and credential query values the test sent (headers, URL)."""
        if not self._read_environment:
            self._read_environment = True
            self._redactor.read_environment()
        return self._redactor

    @property
    def secrets(self) -> set[str]:
        """The secret values :attr:`redactor` knows."""
        return set(self.redactor.secrets)

    def _learn(self, request: Any) -> None:
        """Learn the credentials a request carries (headers, URL userinfo and query)."""
        redactor = self.redactor
        redactor.harvest_headers(request.headers)
        redactor.harvest_url(str(request.uri))

    # ------------------------------------------------------------------ vcrpy's cassette API

    @property
    def write_protected(self) -> bool:
        # Anthropic requests that must not be recorded never get here: can_play_response_for
        # raises for them first. Everything else may pass through.
        return False

    def filter_request(self, request: Any) -> Any:
        """vcrpy: ``None`` makes vcrpy ignore the request (not Anthropic traffic)."""
        return request if self._ours(request) else None

    def _ours(self, request: Any) -> bool:
        return not self._bypass and is_anthropic_request(request.uri, request.headers)

    @contextmanager
    def bypass(self) -> Iterator[None]:
        """Let requests made in the block go to the network unrecorded (the plugin's own calls)."""
        self._bypass = True
        try:
            yield
        finally:
            self._bypass = False

    def can_play_response_for(self, request: Any) -> bool:
        """vcrpy: decide, once per request, whether to play a recording or to record."""
        if not self._ours(request):
            return False
        with self._lock:
            decision = self._decide(request)
            self._pending[id(request)] = decision
        return decision.play is not None

    def play_response(self, request: Any) -> dict[str, Any]:
        """vcrpy: the recorded response for a request :meth:`can_play_response_for` accepted."""
        with self._lock:
            decision = self._pending.pop(id(request), None) or self._decide(request)
            interaction = decision.play
            if interaction is None:
                raise RuntimeError("vcrpy asked to play a request the recorder chose to record")
            self._check_playable(interaction)
            # A request equal to its recording keeps the recording's body: its parsed JSON shares
            # the transcript with the turns before it, so the ledger and the cache analysis work
            # on shared structure instead of re-parsing every turn's whole body.
            body = interaction.request_body if decision.departure is None else decision.departure.request
            exchange = replace(
                interaction, index=len(self.exchanges), request_body=body, request_headers=_headers_of(request)
            )
            if decision.departure is not None:
                self.departures.append(replace(decision.departure, exchange=exchange.index))
            self.exchanges.append(exchange)
        headers = {name: list(values) for name, values in interaction.response_headers.items()}
        if interaction.status in _RETRYABLE or interaction.status >= 500:
            # The SDK would sleep for retry-after (seconds) before retrying; in replay there is
            # nothing to wait for.
            headers["retry-after-ms"] = ["1"]
        return {
            "status": {"code": interaction.status, "message": interaction.reason or None},
            "headers": headers,
            "body": {"string": interaction.response_body.raw},
        }

    def append(self, request: Any, response: Mapping[str, Any]) -> None:
        """vcrpy: a request went to the network; keep it if it is Anthropic traffic."""
        if not self._ours(request):
            return
        headers = _headers_of(request)
        self._learn(request)
        response_headers = {str(k).lower(): [str(v) for v in values] for k, values in response["headers"].items()}
        raw = response["body"]["string"] or b""
        if isinstance(raw, str):
            raw = raw.encode("utf-8")
        from .cassette import _decompress

        raw = _decompress(raw, response_headers.pop("content-encoding", []), self.cassette_path, len(self.recorded))
        with self._lock:
            pending = self._pending.pop(id(request), None)
            interaction = Interaction(
                index=len(self.exchanges),
                method=str(request.method).upper(),
                uri=str(request.uri),
                request_headers=headers,
                request_body=Body(_body_of(request)),
                status=int(response["status"]["code"]),
                reason=str(response["status"].get("message") or ""),
                response_headers=response_headers,
                response_body=Body(raw),
                recorded_at=pending.started if pending is not None else round(self.clock(), 6),
                # vcrpy hands the exchange over once the response is read in full.
                responded_at=round(self.clock(), 6),
            )
            self.exchanges.append(interaction)
            self.recorded.append(interaction)

    def find_requests_with_most_matches(self, request: Any) -> list[Any]:
        """vcrpy (aiohttp redirects): no similarity search here."""
        return []

    def _save(self, force: bool = False) -> None:
        """vcrpy calls this on exit; :meth:`save` is called by the plugin instead."""

    # ------------------------------------------------------------------ decisions

    def _decide(self, request: Any) -> _Decision:
        started = round(self.clock(), 6)
        method = str(request.method).upper()
        path = urlsplit(request.uri).path
        self._learn(request)
        body = self._redacted(_body_of(request))
        if self.mode is RecordMode.ALL:
            return _Decision(None, started)
        queue = self._queues.get((method, path))
        if queue:
            found = self._exact(queue, body)
            if found is not None:
                return _Decision(self._take(queue, found), started)
            candidate = self._recordings[queue[0]]
            difference, same = _compare(candidate.request_body, body)
            if same:
                return _Decision(self._take(queue, queue[0]), started)
            if self.mode is RecordMode.NEW_EPISODES:
                return _Decision(None, started)
            if self.on_mismatch == "continue":
                interaction = self._take(queue, queue[0])
                return _Decision(interaction, started, Departure(-1, interaction, Body(body), difference))
            self._raise(self._mismatch(method, path, candidate, body, difference))
        if self.mode is RecordMode.NEW_EPISODES or (self.mode is RecordMode.ONCE and self.loaded is None):
            return _Decision(None, started)
        self._raise(self._missing(method, path, body))
        raise AssertionError("unreachable")

    def _redacted(self, body: bytes) -> bytes:
        # Cassettes hold "<redacted>" where a secret was; compare like with like (the writer
        # redacts bodies with this same function).
        return self.redactor.body(body)

    def _exact(self, queue: deque[int], body: bytes) -> int | None:
        for position, index in enumerate(queue):
            if position >= _LOOKAHEAD:
                break
            if self._recordings[index].request_body.matches(body):
                return index
        return None

    def _take(self, queue: deque[int], index: int) -> Interaction:
        if queue[0] == index:
            queue.popleft()
        else:
            queue.remove(index)
        self._played.add(index)
        return self._recordings[index]

    def _check_playable(self, interaction: Interaction) -> None:
        """Fail the test, naming the cassette, rather than hand the SDK a corrupt recording (issue 16)."""
        from .ledger import playback_problem

        problem = playback_problem(interaction)
        if problem is not None:
            self._raise(
                CassetteError(
                    "cassette cannot be replayed",
                    file=str(self.cassette_path),
                    test=self.test,
                    why=f"{problem}: the recorded response is corrupt",
                    fix=f"re-record it: {self.record_command('all')}",
                )
            )

    def _raise(self, error: TokenBudgetError) -> None:
        interrupt = ReplayInterrupt(error)
        self.errors.append(interrupt)
        raise interrupt

    def _ordinal(self, method: str, path: str) -> int:
        return 1 + sum(1 for e in self.exchanges if e.method == method and e.path == path)

    def _mismatch(
        self, method: str, path: str, candidate: Interaction, body: bytes, difference: Difference | None
    ) -> RequestMismatch:
        ordinal = self._ordinal(method, path)
        details: list[str] = []
        if difference is not None:
            why = f"{method} {path} #{ordinal} differs at {difference.path}" + (
                f", offset {difference.offset}" if difference.offset is not None else ""
            )
            if difference.kind == "added":
                details.append(f"added:    {difference.after}")
            elif difference.kind == "removed":
                details.append(f"removed:  {difference.before}")
            else:
                details.append(f"recorded: {difference.before}")
                details.append(f"now:      {difference.after}")
        else:
            offset = _byte_offset(candidate.request_body.raw, body)
            why = f"{method} {path} #{ordinal} differs from its recording at byte {offset}"
        return RequestMismatch(
            "a request departs from its recording",
            difference=difference,
            file=f"{self.cassette_path} (interaction {candidate.index})",
            test=self.test,
            why=why,
            details=details,
            fix=f"if the change is intended, re-record: {self.record_command('all')}",
        )

    def _missing(self, method: str, path: str, body: bytes) -> MissingRecording:
        ordinal = self._ordinal(method, path)
        replayed = [
            i for i in self._played if self._recordings[i].method == method and self._recordings[i].path == path
        ]
        if self.loaded is None:
            why = f"no cassette for this test; it sent {method} {path}"
            fix = self.record_command("once")
        elif replayed and any(self._recordings[i].request_body.raw == body for i in replayed):
            why = (
                f"{method} {path} #{ordinal} was already replayed: the test sends this request more "
                f"times than it was recorded ({len(replayed)})"
            )
            fix = self.record_command("all")
        else:
            recorded = len(replayed)
            why = f"{method} {path} #{ordinal} is not recorded (the cassette has {recorded} such request(s))"
            fix = self.record_command("all")
        return MissingRecording(
            "no recording for a request", file=str(self.cassette_path), test=self.test, why=why, fix=fix
        )

    # ------------------------------------------------------------------ results

    @property
    def unused(self) -> list[Interaction]:
        """Recordings this test did not replay (none in ``all``/``new_episodes`` modes)."""
        if self.mode in (RecordMode.ALL, RecordMode.NEW_EPISODES):
            return []
        return [i for i in self._recordings if i.index not in self._played]

    def ledger(self) -> Ledger:
        """The ledger of this test's exchanges so far, in the order they happened."""
        with self._lock:
            exchanges = list(self.exchanges)
        # The live ``token_ledger`` asks on every access; exchanges only grow, so their count
        # says whether the last ledger is still the current one.
        if self._ledger is None or self._ledger[0] != len(exchanges):
            from .ledger import turns_from

            self._ledger = (len(exchanges), turns_from(exchanges, source=self.cassette_path, test=self.test))
        return self._ledger[1]

    def to_save(self) -> list[Interaction] | None:
        """What the cassette should hold after this test, or ``None`` to leave it as it is."""
        if not self.recorded:
            return None
        if self.mode is RecordMode.NEW_EPISODES and self.loaded is not None:
            return [*self.loaded.interactions, *self.recorded]
        return list(self.recorded)

    def save(self) -> bool:
        """Write the cassette (atomically) if this test recorded anything; say whether it did.

        Under a cross-process lock (issue 16): in ``new_episodes`` mode the cassette is read
        again, so that what another run appended since this one loaded it is kept, not lost.
        """
        if not self.recorded:
            return False
        from ._atomic import write_lock
        from .cassette import load_cassette, save_cassette

        with write_lock(self.cassette_path):
            if self.mode is RecordMode.NEW_EPISODES and self.loaded is not None and self.cassette_path.is_file():
                self.loaded = load_cassette(self.cassette_path)
            interactions = self.to_save() or []
            renumbered = [replace(item, index=i) for i, item in enumerate(interactions)]
            save_cassette(self.cassette_path, renumbered, redactor=self.redactor, test=self.test)
        return True

    @contextmanager
    def patched(self) -> Iterator[Recorder]:
        """Route the HTTP clients' traffic to this recorder for the duration of the block.

        vcrpy's patchers are built once per process (see :class:`_Dispatcher`) and applied for
        the block; building them anew for every test cost more than the rest of the plugin.
        """
        route = self.route()
        try:
            yield self
        finally:
            route.close()

    def route(self) -> Route:
        """Route the HTTP clients' traffic to this recorder until the returned route is closed
        (:meth:`patched` without a ``with`` block, for a test's setup and teardown hooks)."""
        return _DISPATCHER.route(self)


class Route:
    """An open route of the clients' calls to one recorder (:meth:`Recorder.route`); close it once."""

    __slots__ = ("_dispatcher", "previous", "watcher")

    def __init__(self, dispatcher: _Dispatcher, previous: Recorder | None) -> None:
        self._dispatcher: _Dispatcher | None = dispatcher
        self.previous = previous
        self.watcher: _PatchOnImport | None = None

    def close(self) -> None:
        """Stop routing (undo what opening it did); harmless the second time."""
        dispatcher, self._dispatcher = self._dispatcher, None
        if dispatcher is not None:
            dispatcher._unroute(self)


class _Dispatcher:
    """The one cassette object vcrpy's patchers are built with: it hands each call to the recorder
    of the test that is running, and lets traffic pass untouched when none is.

    Building vcrpy's patchers imports every HTTP client library it knows and inspects forty patch
    targets, which cost more than the rest of the plugin when done for every test. They are built
    once, on first need, and applied around each test by plain attribute swaps (what
    ``mock.patch.object`` does, without its per-call introspection).

    A test that starts with no HTTP client library imported cannot reach the network until it
    imports one: for it the patches wait for that import (:class:`_PatchOnImport`) and are applied
    the moment the import statement completes, before any request can be made. A suite whose
    tests never touch an HTTP client never imports vcrpy.

    A patch captures the client method it wraps when it is built: a transport patched by another
    tool after that (a session fixture, say) is wrapped as it was then; vcrpy's own nested
    cassettes (pytest-recording) stack over ours as before.
    """

    _path = "tokenbudget"
    custom_patches: tuple[Any, ...] = ()

    def __init__(self) -> None:
        self.recorder: Recorder | None = None
        self._targets: list[tuple[Any, str, Any]] | None = None
        self._others: list[Any] = []
        self._watcher = _PatchOnImport(self._apply)
        self._applied: list[tuple[Any, str, Any]] | None = None
        self._depth = 0

    @property
    def skip_patchers(self) -> tuple[str, ...]:
        return _absent_clients()

    def route(self, recorder: Recorder) -> Route:
        """Hand the clients' calls to ``recorder`` until the route is closed (routes nest)."""
        route = Route(self, self.recorder)
        self.recorder = recorder
        self._depth += 1
        if self._depth > 1:
            return route  # nested (a pytester session inside a test): the outermost route patches
        try:
            if _clients_loaded():
                self._apply()
            else:
                route.watcher = self._watcher
                route.watcher.install()
        except BaseException:
            route.close()
            raise
        return route

    def _unroute(self, route: Route) -> None:
        try:
            if self._depth == 1:
                if route.watcher is not None:
                    route.watcher.remove()
                self._restore()
        finally:
            self._depth -= 1
            self.recorder = route.previous

    def missed_clients(self) -> list[str]:
        """HTTP client libraries the running test loaded without an import statement, before
        the patches could follow (its calls through them were not recorded)."""
        if not self._watcher.installed or not _clients_loaded():
            return []
        return self._watcher.missed()

    def _apply(self) -> None:
        if self._applied is not None:
            return
        if self._targets is None:
            from vcr.patch import CassettePatcherBuilder

            targets, others = [], []
            for patcher in CassettePatcherBuilder(self).build():
                if hasattr(patcher, "getter") and hasattr(patcher, "attribute"):  # mock.patch.object
                    targets.append((patcher.getter(), patcher.attribute, patcher.new))
                else:  # vcrpy's pooled-connection cleanup, a context manager
                    others.append(patcher)
            self._targets, self._others = targets, others
        applied = []
        for target, name, replacement in self._targets:
            applied.append((target, name, getattr(target, "__dict__", {}).get(name, _ABSENT)))
            setattr(target, name, replacement)
        self._applied = applied
        for other in self._others:
            other.__enter__()

    def _restore(self) -> None:
        applied, self._applied = self._applied, None
        if applied is None:
            return
        for other in reversed(self._others):
            other.__exit__(None, None, None)
        for target, name, original in reversed(applied):
            if original is _ABSENT:
                delattr(target, name)
            else:
                setattr(target, name, original)

    # vcrpy's cassette API, forwarded
    @property
    def write_protected(self) -> bool:
        return False

    def filter_request(self, request: Any) -> Any:
        recorder = self.recorder
        return recorder.filter_request(request) if recorder is not None else None

    def can_play_response_for(self, request: Any) -> bool:
        recorder = self.recorder
        return recorder.can_play_response_for(request) if recorder is not None else False

    def play_response(self, request: Any) -> dict[str, Any]:
        recorder = self.recorder
        if recorder is None:  # pragma: no cover - vcrpy asks only after can_play_response_for
            raise RuntimeError("tokenbudget: no recorder for a recorded response")
        return recorder.play_response(request)

    def append(self, request: Any, response: Mapping[str, Any]) -> None:
        recorder = self.recorder
        if recorder is not None:
            recorder.append(request, response)

    def find_requests_with_most_matches(self, request: Any) -> list[Any]:
        recorder = self.recorder
        return recorder.find_requests_with_most_matches(request) if recorder is not None else []


_DISPATCHER = _Dispatcher()


def _compare(recorded: Body, body: bytes) -> tuple[Difference | None, bool]:
    """(first difference, equal?) between a recorded body and a new one, parsed when both are JSON."""
    try:
        new = json.loads(body) if body else None
        old = recorded.json()
    except ValueError:
        return None, recorded.raw == body
    from .prefix import first_difference

    difference = first_difference(old, new)
    return difference, difference is None


def _byte_offset(old: bytes, new: bytes) -> int:
    limit = min(len(old), len(new))
    return next((i for i in range(limit) if old[i] != new[i]), limit)


# --------------------------------------------------------------------------------------------
# one test's recorder


def cassette_path(cassette_dir: Path, module: Path, test_name: str, class_name: str | None = None) -> Path:
    """``<cassette_dir>/<module stem>/<Class.>test_name.yaml``, with unsafe characters replaced."""
    name = f"{class_name}.{test_name}" if class_name else test_name
    return _module_dir(cassette_dir, module) / (_UNSAFE.sub("_", name) + ".yaml")


@functools.lru_cache(maxsize=1024)
def _module_dir(cassette_dir: Path, module: Path) -> Path:
    return cassette_dir / module.stem


def record_command(nodeid: str, mode: str) -> str:
    """The command that re-runs one test in a record mode."""
    return f"pytest {shlex.quote(nodeid)} --token-budget-record={mode}"


def accept_command(nodeids: Sequence[str], *, measure: bool) -> str:
    """The command that accepts changed tests into the baseline: re-recorded and measured
    (``measure``; needs an API key), or their estimates written, marked as estimated."""
    tests = " ".join(shlex.quote(nodeid) for nodeid in nodeids)
    if measure:
        return f"pytest {tests} --token-budget-record=all --token-budget-update"
    return f"pytest {tests} --token-budget-update --token-budget-accept-estimates"


def open_recorder(
    path: Path,
    *,
    test: str,
    mode: RecordMode,
    continue_on_mismatch: bool,
    allow_unused: bool,
    redactor: Redactor | None = None,
) -> Recorder:
    """A recorder for one test, its cassette loaded when it exists (and is not re-recorded).

    Args:
        path: the cassette file.
        test: the test's node id.
        mode: the record mode.
        continue_on_mismatch: a request that departs from its recording is replayed anyway and
            noted (``--token-budget`` judges it); otherwise it fails the test.
        allow_unused: do not fail a test that leaves recordings unplayed.
        redactor: the session's redactor.

    Raises:
        CassetteError: the cassette exists but cannot be read.
    """
    loaded: Cassette | None = None
    if mode is not RecordMode.ALL and os.path.exists(path):
        from .cassette import load_cassette

        loaded = load_cassette(path)
    return Recorder(
        path,
        test=test,
        mode=mode,
        loaded=loaded,
        on_mismatch="continue" if continue_on_mismatch else "fail",
        allow_unused=allow_unused,
        record_command=lambda record_mode: record_command(test, record_mode),
        redactor=redactor,
    )


def replays_only(recorder: Recorder) -> bool:
    """Whether this test can only replay (so a placeholder key is safe and needed)."""
    return recorder.mode is RecordMode.NONE or (recorder.mode is RecordMode.ONCE and recorder.loaded is not None)


@contextmanager
def placeholder_key(needed: bool) -> Iterator[None]:
    """Set ``ANTHROPIC_API_KEY`` to a placeholder for the block when it is unset and ``needed``
    (:func:`set_placeholder_key` and :func:`clear_placeholder_key` around the block)."""
    placed = set_placeholder_key(needed)
    try:
        yield
    finally:
        if placed:
            clear_placeholder_key()


def set_placeholder_key(needed: bool) -> bool:
    """Set ``ANTHROPIC_API_KEY`` to a placeholder when it is unset and ``needed``; say whether it did.

    The SDK refuses to build a request without some credential, even in replay; the placeholder
    never reaches a cassette (nothing is recorded in replay, and headers are not stored).
    """
    if not needed or os.environ.get("ANTHROPIC_API_KEY"):
        return False
    os.environ["ANTHROPIC_API_KEY"] = PLACEHOLDER_API_KEY
    return True


def clear_placeholder_key() -> None:
    """Remove the placeholder :func:`set_placeholder_key` set (a key the test set itself stays)."""
    if os.environ.get("ANTHROPIC_API_KEY") == PLACEHOLDER_API_KEY:
        del os.environ["ANTHROPIC_API_KEY"]


_COUNT_FIELDS = (
    "model",
    "messages",
    "system",
    "tools",
    "tool_choice",
    "thinking",
    "cache_control",
    "speed",
    "output_config",
)


def count_tokens_live(recorder: Recorder, requests: Mapping[int, Mapping[str, Any]]) -> dict[int, int]:
    """Exact input tokens of ``requests`` (turn index -> request body) from the count_tokens API.

    Only with a real key: without one (CI) this returns nothing and the analysis estimates from
    characters. The calls bypass the recorder: they are the plugin's, not the test's, and are
    never recorded. One failed call (no network, no permission) drops every count, so a run's
    turns are either all counted or all estimated.
    """
    key = os.environ.get("ANTHROPIC_API_KEY")
    if not requests or not key or key == PLACEHOLDER_API_KEY:
        return {}
    import anthropic

    counted: dict[int, int] = {}
    with recorder.bypass():
        client = anthropic.Anthropic(max_retries=1)
        for index, request in requests.items():
            params = {k: v for k, v in request.items() if k in _COUNT_FIELDS}
            try:
                counted[index] = client.messages.count_tokens(**params).input_tokens
            except anthropic.AnthropicError:
                return {}
    return counted


def ledger_of_vcr_cassette(vcr_cassette: Any) -> Ledger:
    """The ledger of a pytest-recording (vcrpy) cassette: the interactions played or recorded so far."""
    from .cassette import _from_vcr_dict

    loaded = getattr(vcr_cassette, "_loaded_count", 0)
    used = [
        _from_vcr_dict(request._to_dict(), response, index)
        for index, (request, response) in enumerate(vcr_cassette.data)
        if vcr_cassette.play_counts[index] > 0 or index >= loaded
    ]
    from .ledger import turns_from

    return turns_from(used, source=str(vcr_cassette._path))


def unrouted_clients() -> list[str]:
    """HTTP client libraries the running test loaded without an ``import`` statement before the
    recorder could follow them (``importlib.import_module``): their calls were not recorded."""
    return _DISPATCHER.missed_clients()


class SafePersister:
    """A vcrpy persister for cassettes pytest-recording writes beside ours: before the file is
    written, credential headers are dropped (``authorization``, ``x-api-key``, cookies...: a
    default ``filter_headers``), and every secret the session knows, and those the requests
    carry, is redacted from URLs, header values and bodies (compressed bodies are stored
    decompressed when they held one). A cassette in which a secret still survives is refused,
    naming the file, the secret's source and the fix.

    Args:
        inner: the persister it writes through (vcrpy's ``FilesystemPersister`` by default).
        redactor: the session's redactor.
        test: the test's node id (named in the refusal).
    """

    def __init__(self, inner: Any, redactor: Redactor, test: str | None = None) -> None:
        self.inner = inner
        self.redactor = redactor
        self.test = test

    def load_cassette(self, cassette_path: Any, serializer: Any) -> Any:
        return self.inner.load_cassette(cassette_path, serializer=serializer)

    def save_cassette(self, cassette_path: Any, cassette_dict: Mapping[str, Any], serializer: Any) -> None:
        from vcr.serialize import serialize

        from ._redact import is_credential_header

        redactor = self.redactor
        redactor.read_environment()
        requests = list(cassette_dict.get("requests", []))
        for request in requests:
            redactor.harvest_headers(dict(request.headers))
            redactor.harvest_url(str(request.uri))
        safe = {
            "requests": [_safe_vcr_request(r, redactor, is_credential_header) for r in requests],
            "responses": [_safe_vcr_response(r, redactor, is_credential_header) for r in cassette_dict["responses"]],
        }
        found = redactor.find(serialize(safe, serializer))
        if found:
            raise CassetteError(
                "refusing to write a pytest-recording cassette that contains a secret",
                file=str(cassette_path),
                test=self.test,
                why=f"the value of {', '.join(sorted({f.source for f in found}))} survives redaction "
                f"({found[0].encoding}); nothing was written",
                fix="keep the secret out of what the test sends and receives, or add a before_record_request/"
                "before_record_response filter to vcr_config that removes it",
            )
        self.inner.save_cassette(cassette_path, safe, serializer=serializer)


def _safe_vcr_request(request: Any, redactor: Redactor, credential: Callable[[str], bool]) -> Any:
    from vcr.request import Request

    body = request.body
    if isinstance(body, str):
        body = redactor.body(body.encode("utf-8")).decode("utf-8", "replace")
    elif isinstance(body, bytes):
        body = redactor.body(body)
    headers = {k: redactor.text(str(v)) for k, v in request.headers.items() if not credential(str(k))}
    return Request(request.method, redactor.url(str(request.uri)), body, headers)


def _safe_vcr_response(response: Mapping[str, Any], redactor: Redactor, credential: Callable[[str], bool]) -> Any:
    headers = {
        k: [redactor.text(str(v)) for v in (values if isinstance(values, list) else [values])]
        for k, values in (response.get("headers") or {}).items()
        if not credential(str(k))
    }
    body = dict(response.get("body") or {})
    raw = body.get("string")
    if isinstance(raw, str):
        body["string"] = redactor.body(raw.encode("utf-8")).decode("utf-8", "replace")
    elif isinstance(raw, bytes) and raw:
        encoding = {k.lower(): v for k, v in headers.items()}.get("content-encoding", [])
        plain = raw
        if encoding:
            from .cassette import _decompress

            try:
                plain = _decompress(raw, list(encoding), Path("<pytest-recording>"), 0)
            except CassetteError:  # an unreadable body stays as it is (the final check still runs)
                plain = raw
        redacted = redactor.body(plain)
        if redacted != plain:
            headers = {k: v for k, v in headers.items() if k.lower() not in ("content-encoding", "content-length")}
            headers["content-length"] = [str(len(redacted))]
            body["string"] = redacted
    return {**response, "headers": headers, "body": body}
