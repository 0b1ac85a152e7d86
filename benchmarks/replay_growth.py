"""How replay cost grows with the length of an agent run: plain vcrpy against pytest-tokenbudget.

Usage::

    python benchmarks/replay_growth.py [--turns 25 50 100 200] [--out DIR] [--skip-vcrpy-above N]

For each number of turns it records the agent of ``agent_run.py`` twice through the emulator
(plain vcrpy with body matching, and pytest-tokenbudget's recorder), then replays each cassette
in fresh subprocesses with nothing listening, and runs the same agent on the same responses
with no recorder at all (``bare``: an ``httpx2.MockTransport`` serving them in order). See
``benchmarks/README.md`` for the columns and the targets; exits 1 when a target fails.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from agent_run import replies, run_agent

VARIANTS = ("bare", "ours", "vcrpy")
MATCH_ON = ["method", "path", "body"]
API_KEY = "bench-key"
# Variables a worker keeps from the parent environment. Everything else is dropped, so a secret
# in the caller's environment (which the recorder scans every request body for) or a proxy
# setting cannot change the numbers from one machine to the next.
_KEEP_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "SYSTEMROOT")


# --------------------------------------------------------------------------------------------
# recording


@dataclass
class Recording:
    """The cassettes of one run and the sizes of what was sent and received.

    Attributes:
        turns: tool-calling turns (the run sends ``turns + 1`` requests).
        requests: requests sent.
        final_request_bytes: body of the last (largest) request.
        response_bytes: all response bodies, decompressed.
        all_request_bytes: all request bodies (the transcript re-sent every turn).
        vcrpy_path: plain vcrpy's cassette.
        ours_path: pytest-tokenbudget's cassette.
        vcrpy_record_s: wall time of the recording run through vcrpy.
        vcrpy_record_body_matching: whether vcrpy recorded with its body matcher.
        ours_record_s: wall time of the recording run through our recorder, ``save()`` included.
    """

    turns: int
    requests: int
    final_request_bytes: int
    response_bytes: int
    all_request_bytes: int
    vcrpy_path: str
    ours_path: str
    vcrpy_record_s: float
    ours_record_s: float
    vcrpy_record_body_matching: bool

    @property
    def vcrpy_bytes(self) -> int:
        return Path(self.vcrpy_path).stat().st_size

    @property
    def ours_bytes(self) -> int:
        return Path(self.ours_path).stat().st_size


def _plain_vcr(record_mode: str, *, body_matching: bool = True) -> Any:
    import vcr

    # Body matching: vcrpy's default (method, scheme, host, port, path, query) ignores bodies and
    # would replay any request of a run for any other.
    match_on = MATCH_ON if body_matching else ["method", "path"]
    return vcr.VCR(record_mode=record_mode, match_on=match_on, decode_compressed_response=True)


def record(turns: int, folder: Path, *, vcrpy_body_matching: bool = True) -> Recording:
    """Record a run of ``turns`` turns with plain vcrpy and with our recorder, each on a fresh emulator.

    Args:
        turns: tool-calling turns.
        folder: where the cassettes go.
        vcrpy_body_matching: record with vcrpy's body matcher, as its replay does. Without it the
            file is the same (a new cassette in ``once`` mode plays nothing, so matchers only
            decide lookups that all miss), but recording 200 turns takes seconds, not minutes:
            every lookup parses every stored body.
    """
    import anthropic

    from pytest_tokenbudget.emulator import AnthropicEmulator
    from pytest_tokenbudget.record import Recorder, RecordMode

    folder.mkdir(parents=True, exist_ok=True)
    vcrpy_path = folder / f"vcrpy_{turns}.yaml"
    ours_path = folder / f"ours_{turns}.yaml"
    vcrpy_path.unlink(missing_ok=True)
    ours_path.unlink(missing_ok=True)

    with AnthropicEmulator() as emulator:
        emulator.script(*replies(turns))
        client = anthropic.Anthropic(base_url=emulator.base_url, api_key=API_KEY, max_retries=0)
        started = time.perf_counter()
        with _plain_vcr("once", body_matching=vcrpy_body_matching).use_cassette(str(vcrpy_path)):
            run_agent(client, turns)
        vcrpy_record_s = time.perf_counter() - started
        vcrpy_requests = [r.body for r in emulator.requests]

    with AnthropicEmulator() as emulator:
        emulator.script(*replies(turns))
        client = anthropic.Anthropic(base_url=emulator.base_url, api_key=API_KEY, max_retries=0)
        started = time.perf_counter()
        rec = Recorder(ours_path, test="bench", mode=RecordMode.ALL, clock=emulator.clock.now)
        with rec.patched():
            requests = run_agent(client, turns)
        rec.save()
        ours_record_s = time.perf_counter() - started
        ours_requests = [r.body for r in emulator.requests]

    if vcrpy_requests != ours_requests:
        raise RuntimeError(f"{turns} turns: the two recordings sent different requests; the agent is not deterministic")
    bodies = [interaction.request_body.raw for interaction in rec.recorded]
    return Recording(
        turns=turns,
        requests=requests,
        final_request_bytes=len(bodies[-1]),
        response_bytes=sum(len(interaction.response_body.raw) for interaction in rec.recorded),
        all_request_bytes=sum(len(body) for body in bodies),
        vcrpy_path=str(vcrpy_path),
        ours_path=str(ours_path),
        vcrpy_record_s=vcrpy_record_s,
        ours_record_s=ours_record_s,
        vcrpy_record_body_matching=vcrpy_body_matching,
    )


# --------------------------------------------------------------------------------------------
# one replay, in a worker process


def _unused_base_url() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # Closed again: nothing listens there, so a request that escaped the recorder would fail.
    return f"http://127.0.0.1:{port}"


def _max_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB, macOS bytes


def _status_bytes(field_name: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1]) * 1024
    raise OSError(f"no {field_name} in /proc/self/status")


def rss_method() -> str:
    """How peak RSS is measured here: ``VmHWM`` reset before the replay (Linux), else ``ru_maxrss``."""
    return "VmHWM" if os.access("/proc/self/clear_refs", os.W_OK) else "ru_maxrss"


def _rss_start() -> int:
    if rss_method() == "VmHWM":
        # Writing 5 resets the process's peak RSS (VmHWM) to its current RSS (Linux >= 4.0), so
        # the peak read afterwards belongs to the replay, not to the imports before it.
        Path("/proc/self/clear_refs").write_text("5")
        return _status_bytes("VmRSS")
    return _max_rss_bytes()


def _rss_peak_growth(start: int) -> int:
    peak = _status_bytes("VmHWM") if rss_method() == "VmHWM" else _max_rss_bytes()
    return peak - start


def _replay_bare(cassette: str, turns: int, base_url: str) -> Callable[[], dict[str, Any]]:
    import anthropic
    import httpx2

    from pytest_tokenbudget.cassette import load_cassette

    # The recorded responses, read before the clock starts: bare measures the agent and the SDK.
    responses = [(i.status, i.content_type, i.response_body.raw) for i in load_cassette(cassette).interactions]
    served: list[int] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        status, content_type, body = responses[len(served)]
        served.append(len(request.content))
        return httpx2.Response(status, headers={"content-type": content_type}, content=body)

    client = anthropic.Anthropic(
        base_url=base_url,
        api_key=API_KEY,
        max_retries=0,
        http_client=httpx2.Client(transport=httpx2.MockTransport(handler)),
    )

    def run() -> dict[str, Any]:
        started = time.perf_counter()
        requests = run_agent(client, turns)
        if requests != len(responses):
            raise RuntimeError(f"bare: {requests} requests for {len(responses)} responses")
        return {"run": time.perf_counter() - started}

    return run


def _replay_ours(cassette: str, turns: int, base_url: str) -> Callable[[], dict[str, Any]]:
    import anthropic
    import httpx2
    import vcr.patch  # noqa: F401 - imported by Recorder.patched(); kept out of the timing

    from pytest_tokenbudget.analysis import analyze  # imported before the clock starts, same reason
    from pytest_tokenbudget.cassette import load_cassette
    from pytest_tokenbudget.record import Recorder, RecordMode

    client = anthropic.Anthropic(base_url=base_url, api_key=API_KEY, max_retries=0)

    def run() -> dict[str, Any]:
        t0 = time.perf_counter()
        rec = Recorder(Path(cassette), test="bench", mode=RecordMode.NONE, loaded=load_cassette(cassette))
        t1 = time.perf_counter()
        transport = [0.0]
        with rec.patched():
            # Time spent inside the patched transport: vcrpy's stub and the recorder's matching,
            # everything the plugin adds to a request (the SDK's own work happens outside it).
            stub = httpx2.HTTPTransport.handle_request

            def timed(self: httpx2.HTTPTransport, request: httpx2.Request) -> httpx2.Response:
                started = time.perf_counter()
                try:
                    return stub(self, request)
                finally:
                    transport[0] += time.perf_counter() - started

            httpx2.HTTPTransport.handle_request = timed  # type: ignore[method-assign]
            try:
                requests = run_agent(client, turns)
            finally:
                httpx2.HTTPTransport.handle_request = stub  # type: ignore[method-assign]
        t2 = time.perf_counter()
        ledger = rec.ledger()
        t3 = time.perf_counter()
        analysis = analyze(ledger)
        t4 = time.perf_counter()
        if rec.errors or rec.unused or len(ledger.turns) != requests or len(analysis.turns) != requests:
            raise RuntimeError(
                f"ours: {len(rec.errors)} errors, {len(rec.unused)} unused recordings, "
                f"{len(ledger.turns)} ledger turns for {requests} requests"
            )
        return {"load": t1 - t0, "run": t2 - t1, "ledger": t3 - t2, "analysis": t4 - t3, "transport": transport[0]}

    return run


def _replay_vcrpy(cassette: str, turns: int, base_url: str) -> Callable[[], dict[str, Any]]:
    import anthropic
    import vcr.patch  # noqa: F401

    client = anthropic.Anthropic(base_url=base_url, api_key=API_KEY, max_retries=0)
    replayer = _plain_vcr("none")

    def run() -> dict[str, Any]:
        t0 = time.perf_counter()
        with replayer.use_cassette(cassette) as played:
            t1 = time.perf_counter()
            requests = run_agent(client, turns)
        t2 = time.perf_counter()
        if played.play_count != requests or not played.all_played:
            raise RuntimeError(f"vcrpy: played {played.play_count} of {len(played)} for {requests} requests")
        return {"load": t1 - t0, "run": t2 - t1}

    return run


_REPLAYS = {"bare": _replay_bare, "ours": _replay_ours, "vcrpy": _replay_vcrpy}


def worker(variant: str, cassette: str, turns: int, memory: str, profile: str | None) -> dict[str, Any]:
    """Replay once in this process; everything is imported and built before the clock starts."""
    run = _REPLAYS[variant](cassette, turns, _unused_base_url())
    # The imports leave ~165,000 objects that every full collection would scan again (~60 ms
    # here): one such collection lands in whichever replay crosses the threshold first, a fixed
    # cost that is neither the plugin's nor vcrpy's. Freeze them, as a long-lived process would.
    gc.collect()
    gc.freeze()
    if memory == "tracemalloc":
        tracemalloc.start()
    rss_before = _rss_start()
    started = time.perf_counter()
    if profile:
        import cProfile

        profiler = cProfile.Profile()
        phases = profiler.runcall(run)
        profiler.dump_stats(profile)
    else:
        phases = run()
    seconds = time.perf_counter() - started
    if memory == "tracemalloc":
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    else:
        peak = _rss_peak_growth(rss_before)
    return {"variant": variant, "turns": turns, "seconds": seconds, "phases": phases, "peak_bytes": peak}


# --------------------------------------------------------------------------------------------
# the driver


@dataclass
class Measured:
    """Median replay measurements of one variant at one number of turns."""

    seconds: float
    peak_bytes: float
    phases: dict[str, float] = field(default_factory=dict)
    runs: list[float] = field(default_factory=list)


def _worker_env() -> dict[str, str]:
    env = {name: os.environ[name] for name in _KEEP_ENV if name in os.environ}
    env["PYTHONHASHSEED"] = "0"
    return env


def _spawn(variant: str, recording: Recording, memory: str, profile: str | None = None) -> dict[str, Any]:
    cassette = recording.ours_path if variant in ("ours", "bare") else recording.vcrpy_path
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        variant,
        "--cassette",
        cassette,
        "--turns",
        str(recording.turns),
        "--memory",
        memory,
    ]
    if profile:
        command += ["--profile", profile]
    done = subprocess.run(command, capture_output=True, text=True, env=_worker_env(), check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{variant} replay of {recording.turns} turns failed:\n{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def measure(variant: str, recording: Recording, repeats: int, memory: str) -> Measured:
    """Replay ``repeats`` times in fresh processes; medians of time, phases and (rss) peak memory."""
    results = []
    for attempt in range(repeats):
        result = _spawn(variant, recording, "rss")
        results.append(result)
        _progress(f"  {variant:5} {recording.turns:4d} turns  run {attempt + 1}/{repeats}: {result['seconds']:.3f} s")
    phases = {name: statistics.median(r["phases"][name] for r in results) for name in results[0]["phases"]}
    seconds = [r["seconds"] for r in results]
    peak = statistics.median(r["peak_bytes"] for r in results)
    if memory == "tracemalloc":
        # One extra run: tracing slows the replay down, so it is never the one that is timed.
        peak = _spawn(variant, recording, "tracemalloc")["peak_bytes"]
    return Measured(statistics.median(seconds), peak, phases, seconds)


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _versions() -> str:
    import anthropic
    import httpx2
    import vcr

    return (
        f"Python {platform.python_version()} ({platform.python_implementation()}), "
        f"anthropic {anthropic.__version__}, vcrpy {vcr.__version__}, httpx2 {httpx2.__version__}, "
        f"{platform.system()} {platform.machine()}, CPUs: {os.cpu_count()}"
    )


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(header[i]), *(len(row[i]) for row in rows)) for i in range(len(header))]
    lines = [" | ".join(h.rjust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("-+-".join("-" * w for w in widths))
    lines.extend(" | ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in rows)
    return "\n".join(lines)


def _mb(value: float) -> str:
    return f"{value / 1e6:.1f}"


@dataclass
class Verdict:
    name: str
    ok: bool | None  # None: not judged (a measurement is missing, or informational)
    detail: str
    info: bool = False

    def line(self) -> str:
        status = "INFO" if self.info else {True: "PASS", False: "FAIL", None: "NOT JUDGED"}[self.ok]
        return f"{status:10} {self.name}: {self.detail}"


def _own_direct(measured: Measured) -> float:
    """The plugin's own time measured where it is spent: load, the patched transport, ledger, analysis."""
    phases = measured.phases
    return float(phases["load"] + phases["transport"] + phases["ledger"] + phases["analysis"])


def judge(
    recordings: dict[int, Recording],
    results: dict[int, dict[str, Measured]],
    *,
    reference: int,
    max_ratio: float,
    min_speedup: float,
    max_growth: float,
) -> list[Verdict]:
    """The targets, at ``reference`` turns and from ``reference`` to twice as many."""
    verdicts: list[Verdict] = []
    name = f"our cassette <= {max_ratio}x (final request + responses) at {reference} turns"
    if reference in recordings:
        rec = recordings[reference]
        ratio = rec.ours_bytes / (rec.final_request_bytes + rec.response_bytes)
        verdicts.append(Verdict(name, ratio <= max_ratio, f"{ratio:.2f}x"))
    else:
        verdicts.append(Verdict(name, None, f"{reference} turns not run"))

    name = f"our replay >= {min_speedup:g}x faster than plain vcrpy at {reference} turns"
    measured = results.get(reference, {})
    if "ours" in measured and "vcrpy" in measured:
        speedup = measured["vcrpy"].seconds / measured["ours"].seconds
        verdicts.append(Verdict(name, speedup >= min_speedup, f"{speedup:.1f}x"))
    else:
        verdicts.append(Verdict(name, None, "vcrpy replay skipped or turns not run"))

    double = 2 * reference
    # By subtraction the plugin's time also takes in how much slower the SDK's own work runs in a
    # process holding a loaded cassette (more objects for the cyclic garbage collector to scan),
    # and it is the difference of two numbers ten times larger: printed, not judged.
    name = f"our own time by subtraction (ours - bare), from {reference} to {double} turns"
    if reference in results and double in results:
        own = [results[n]["ours"].seconds - results[n]["bare"].seconds for n in (reference, double)]
        growth = own[1] / own[0] if own[0] > 0 else float("inf")
        verdicts.append(Verdict(name, None, f"{own[0]:.3f} s -> {own[1]:.3f} s = {growth:.2f}x", info=True))
    else:
        verdicts.append(Verdict(name, None, f"needs {reference} and {double} turns"))
    name = (
        f"our own time measured directly (load + patched transport + ledger + analysis) grows <= "
        f"{max_growth:g}x from {reference} to {double} turns"
    )
    if reference in results and double in results:
        own = [_own_direct(results[n]["ours"]) for n in (reference, double)]
        growth = own[1] / own[0] if own[0] > 0 else float("inf")
        verdicts.append(Verdict(name, growth <= max_growth, f"{own[0]:.3f} s -> {own[1]:.3f} s = {growth:.2f}x"))
    else:
        verdicts.append(Verdict(name, None, f"needs {reference} and {double} turns"))

    for turns in sorted(results):
        if turns < reference:
            continue
        name = f"our peak memory below plain vcrpy's at {turns} turns"
        if "vcrpy" in results[turns]:
            ours, theirs = results[turns]["ours"].peak_bytes, results[turns]["vcrpy"].peak_bytes
            verdicts.append(Verdict(name, ours < theirs, f"{_mb(ours)} MB vs {_mb(theirs)} MB"))
        else:
            verdicts.append(Verdict(name, None, "vcrpy replay skipped"))
    return verdicts


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--turns",
        type=int,
        nargs="+",
        default=[25, 50, 100, 200],
        help="tool-calling turns per run (default: 25 50 100 200)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="folder for the cassettes and results.json (default: a new temporary folder)",
    )
    parser.add_argument(
        "--skip-vcrpy-above",
        type=int,
        default=None,
        metavar="N",
        help="do not replay with plain vcrpy above N turns (it takes minutes at 200)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="replays per measurement; the median is shown")
    parser.add_argument(
        "--memory",
        choices=["rss", "tracemalloc"],
        default="rss",
        help="peak memory: growth of the peak RSS during the timed replays (default), or "
        "tracemalloc's peak from one extra untimed run",
    )
    parser.add_argument(
        "--profile-ours",
        action="store_true",
        help="also write a cProfile of one replay of ours per turn count (ours_N.prof in --out)",
    )
    parser.add_argument("--reference", type=int, default=100, help=argparse.SUPPRESS)
    parser.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--cassette", help=argparse.SUPPRESS)
    parser.add_argument("--profile", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        print(json.dumps(worker(args.worker, args.cassette, args.turns[0], args.memory, args.profile)))
        return 0

    out: Path = args.out or Path(tempfile.mkdtemp(prefix="replay_growth-"))
    out.mkdir(parents=True, exist_ok=True)
    turns_list = sorted(set(args.turns))
    print(_versions())
    memory = (
        "tracemalloc peak during one extra, untimed replay"
        if args.memory == "tracemalloc"
        else f"growth of the peak RSS during the replay ({rss_method()}), median"
    )
    print(f"cassettes: {out}; replay times: median of {args.repeats} fresh processes; peak memory: {memory}")
    sys.stdout.flush()

    recordings: dict[int, Recording] = {}
    results: dict[int, dict[str, Measured]] = {}
    for turns in turns_list:
        _progress(f"recording {turns} turns")
        skip_vcrpy = args.skip_vcrpy_above is not None and turns > args.skip_vcrpy_above
        recordings[turns] = recording = record(turns, out, vcrpy_body_matching=not skip_vcrpy)
        results[turns] = {}
        for variant in VARIANTS:
            if variant == "vcrpy" and skip_vcrpy:
                continue
            results[turns][variant] = measure(variant, recording, args.repeats, args.memory)
        if args.profile_ours:
            _spawn("ours", recording, "rss", profile=str(out / f"ours_{turns}.prof"))

    header = [
        "turns",
        "final+resp B",
        "vcrpy B",
        "ours B",
        "ours/(f+r)",
        "vcrpy s",
        "ours s",
        "speedup",
        "bare s",
        "own s",
        "own direct s",
        "vcrpy MB",
        "ours MB",
    ]
    rows = []
    for turns in turns_list:
        rec, measured = recordings[turns], results[turns]
        base = rec.final_request_bytes + rec.response_bytes
        ours, bare, vcrpy = measured["ours"], measured["bare"], measured.get("vcrpy")
        rows.append(
            [
                str(turns),
                f"{base:,}",
                f"{rec.vcrpy_bytes:,}",
                f"{rec.ours_bytes:,}",
                f"{rec.ours_bytes / base:.2f}",
                f"{vcrpy.seconds:.3f}" if vcrpy else "skipped",
                f"{ours.seconds:.3f}",
                f"{vcrpy.seconds / ours.seconds:.1f}x" if vcrpy else "skipped",
                f"{bare.seconds:.3f}",
                f"{ours.seconds - bare.seconds:.3f}",
                f"{_own_direct(ours):.3f}",
                _mb(vcrpy.peak_bytes) if vcrpy else "skipped",
                _mb(ours.peak_bytes),
            ]
        )
    print()
    print(_table(header, rows))

    detail_header = [
        "turns",
        "requests",
        "all requests B",
        "ours load s",
        "ours agent s",
        "ours ledger s",
        "ours analysis s",
        "vcrpy load s",
        "record vcrpy s",
        "record ours s",
    ]
    detail_rows = []
    for turns in turns_list:
        rec, measured = recordings[turns], results[turns]
        phases, vcrpy = measured["ours"].phases, measured.get("vcrpy")
        detail_rows.append(
            [
                str(turns),
                str(rec.requests),
                f"{rec.all_request_bytes:,}",
                f"{phases['load']:.3f}",
                f"{phases['run']:.3f}",
                f"{phases['ledger']:.3f}",
                f"{phases['analysis']:.3f}",
                f"{vcrpy.phases['load']:.3f}" if vcrpy else "skipped",
                f"{rec.vcrpy_record_s:.3f}" + ("" if rec.vcrpy_record_body_matching else " (*)"),
                f"{rec.ours_record_s:.3f}",
            ]
        )
    print()
    print(_table(detail_header, detail_rows))
    if not all(rec.vcrpy_record_body_matching for rec in recordings.values()):
        print("(*) recorded with vcrpy's method+path matchers (same file; its replay was skipped)")

    verdicts = judge(recordings, results, reference=args.reference, max_ratio=1.5, min_speedup=20.0, max_growth=2.2)
    print()
    for verdict in verdicts:
        print(verdict.line())

    (out / "results.json").write_text(
        json.dumps(
            {
                "versions": _versions(),
                "memory": args.memory,
                "repeats": args.repeats,
                "recordings": {
                    t: {**asdict(r), "vcrpy_bytes": r.vcrpy_bytes, "ours_bytes": r.ours_bytes}
                    for t, r in recordings.items()
                },
                "replays": {t: {v: asdict(m) for v, m in measured.items()} for t, measured in results.items()},
                "verdicts": [asdict(v) for v in verdicts],
            },
            indent=2,
        )
        + "\n"
    )
    return 1 if any(v.ok is False for v in verdicts) else 0


if __name__ == "__main__":
    sys.exit(main())
