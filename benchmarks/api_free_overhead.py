"""What pytest-tokenbudget costs on tests that never call the API.

Usage::

    python benchmarks/api_free_overhead.py [--tests 2000] [--layout parametrized|functions]
                                           [--repeats 5] [--warmup 1] [--max-ratio 1.10]
                                           [--no-check] [--profile] [--instructions] [--keep]

It writes a throwaway project (a test file of ``--tests`` trivial tests, an empty ``conftest.py``,
a bare ``pytest.ini`` so the rootdir is the project, no cassettes), then runs pytest on it in fresh
subprocesses of this interpreter, ``-q -p no:cacheprovider -p no:xdist`` plus:

- ``bare``: ``-p no:tokenbudget``, the plugin disabled;
- ``loaded``: nothing, the plugin loaded (its autouse fixture runs for every test), no report;
- ``report``: ``--token-budget``, the plugin loaded with its end-of-session report.

The configurations take turns, ``--repeats`` timed runs each after ``--warmup`` untimed ones;
every run must end in ``N passed``. The table shows the wall time of the subprocess (interpreter
start and imports included) and pytest's own session time (the ``in X.XXs`` of its last line),
min and median, and their ratios to ``bare``. Exit status 1 when ``report``'s min wall time is
more than ``--max-ratio`` times ``bare``'s (``--no-check``: always 0), 2 when a run fails.
``--profile`` also runs ``report`` once under cProfile and lists where the plugin's (and vcrpy's)
time goes.

``--instructions`` also runs each configuration once under ``valgrind --tool=callgrind`` and
counts the instructions it executed: unlike wall time, that count is the same from run to run
whatever else the machine is doing (a shared CI machine's wall times move by 10-20% between
runs, more than the overhead measured). The three runs go in parallel (the count does not
depend on contention). Each is about 40x slower than a plain run. With it, the exit status
judges the instruction ratio; without it, the wall time ratio.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import os
import platform
import pstats
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

TEST_FILE = "test_api_free.py"
COMMON_ARGS = ("-q", "-p", "no:cacheprovider", "-p", "no:xdist")
# (name, what it is, extra pytest arguments); the first one is the reference.
CONFIGURATIONS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("bare", "plugin disabled", ("-p", "no:tokenbudget")),
    ("loaded", "plugin loaded, no report", ()),
    ("report", "plugin loaded, --token-budget", ("--token-budget",)),
)
# Dropped from the children's environment: the API key (no test here may reach the API), and
# whatever would make the three configurations other than they claim to be (extra options, extra
# or no auto-loaded plugins) or write outside the project (the GitHub job summary).
_DROP_ENV = (
    "ANTHROPIC_API_KEY",
    "PYTEST_ADDOPTS",
    "PYTEST_PLUGINS",
    "PYTEST_DISABLE_PLUGIN_AUTOLOAD",
    "PYTEST_XDIST_AUTO_NUM_WORKERS",
    "GITHUB_STEP_SUMMARY",
    "GITHUB_ACTIONS",
)
PROFILE_MODULES = ("pytest_tokenbudget", "vcr")
PROFILE_TOP = 25
VCR_BUILDER = ("vcr/patch.py", "_build_patchers_from_mock_triples")
_OUTCOME = re.compile(r"(\d+) (passed|failed|errors?|skipped|xfailed|xpassed|deselected|warnings?|rerun)\b")
_SESSION_TIME = re.compile(r"\bin ([0-9.]+)s\b")
_COLLECTED = re.compile(r"Collected : (\d+)")


class RunFailed(RuntimeError):
    """A pytest run did not end in exactly the expected number of passed tests."""


# --------------------------------------------------------------------------------------------
# the project


def write_project(folder: Path, tests: int, layout: str) -> None:
    """A project of ``tests`` trivial tests: parametrized (one function) or one function each."""
    folder.mkdir(parents=True, exist_ok=True)
    if layout == "parametrized":
        source = f"""import pytest


@pytest.mark.parametrize("i", range({tests}))
def test_x(i):
    assert i >= 0
"""
    else:
        width = len(str(tests - 1))
        source = "".join(f"def test_x_{i:0{width}d}():\n    assert {i} >= 0\n\n\n" for i in range(tests))
        source = source.rstrip("\n") + "\n"
    (folder / TEST_FILE).write_text(source)
    (folder / "conftest.py").write_text("")
    # An ini file, so the rootdir is this folder; nothing set in it.
    (folder / "pytest.ini").write_text("[pytest]\n")


# --------------------------------------------------------------------------------------------
# one run


@dataclass
class Run:
    """One pytest subprocess: its wall time and the session time pytest printed."""

    wall_s: float
    session_s: float
    last_line: str


def child_env() -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if name not in _DROP_ENV}
    env["PYTHONHASHSEED"] = "0"
    return env


def outcomes(last_line: str) -> dict[str, int]:
    """``"2000 passed, 1 warning in 1.2s"`` -> ``{"passed": 2000, "warnings": 1}``."""
    counts: dict[str, int] = {}
    for number, kind in _OUTCOME.findall(last_line):
        kind = {"error": "errors", "warning": "warnings"}.get(kind, kind)
        counts[kind] = counts.get(kind, 0) + int(number)
    return counts


def _last_line(stdout: str) -> str:
    lines = [line.strip(" =") for line in stdout.splitlines() if line.strip(" =")]
    return lines[-1] if lines else ""


def check_passed(done: subprocess.CompletedProcess[str], command: Sequence[str], tests: int) -> str:
    """The last line of a run that passed exactly ``tests`` tests (warnings allowed); else ``RunFailed``."""
    last = _last_line(done.stdout)
    counts = outcomes(last)
    problems = {kind: n for kind, n in counts.items() if kind not in ("passed", "warnings")}
    if done.returncode != 0 or counts.get("passed") != tests or problems:
        tail = "\n".join(done.stdout.splitlines()[-30:])
        raise RunFailed(
            f"expected exactly {tests} passed, got {last!r} (exit status {done.returncode})\n"
            f"command: {' '.join(command)}\n--- stdout (last 30 lines) ---\n{tail}\n"
            f"--- stderr ---\n{done.stderr.strip()}"
        )
    return last


def pytest_command(extra: Sequence[str]) -> list[str]:
    return [sys.executable, "-m", "pytest", *COMMON_ARGS, *extra]


def run_once(project: Path, extra: Sequence[str], tests: int) -> Run:
    command = pytest_command(extra)
    started = time.perf_counter()
    done = subprocess.run(command, cwd=project, capture_output=True, text=True, env=child_env(), check=False)
    wall = time.perf_counter() - started
    last = check_passed(done, command, tests)
    match = _SESSION_TIME.search(last)
    if match is None:
        raise RunFailed(f"no session time in pytest's last line {last!r}")
    return Run(wall, float(match.group(1)), last)


def check_disabling(project: Path) -> None:
    """``-p no:tokenbudget`` must really unload the plugin: then ``--token-budget`` is an unknown option."""
    command = pytest_command(("-p", "no:tokenbudget", "--token-budget", "--collect-only"))
    done = subprocess.run(command, cwd=project, capture_output=True, text=True, env=child_env(), check=False)
    if done.returncode != 4 or "--token-budget" not in done.stderr:
        raise RunFailed(
            f"-p no:tokenbudget did not disable the plugin (exit status {done.returncode}, expected 4: "
            f"--token-budget unrecognized)\ncommand: {' '.join(command)}\n{done.stdout}\n{done.stderr}"
        )


# --------------------------------------------------------------------------------------------
# the measurements


@dataclass
class Measured:
    name: str
    description: str
    extra: tuple[str, ...]
    runs: list[Run] = field(default_factory=list)

    @property
    def wall(self) -> list[float]:
        return [run.wall_s for run in self.runs]

    @property
    def session(self) -> list[float]:
        return [run.session_s for run in self.runs]


def measure(project: Path, tests: int, repeats: int, warmup: int) -> list[Measured]:
    """Every configuration ``warmup`` + ``repeats`` times, taking turns so that drift hits them alike."""
    measured = [Measured(name, description, extra) for name, description, extra in CONFIGURATIONS]
    for attempt in range(-warmup, repeats):
        for m in measured:
            run = run_once(project, m.extra, tests)
            label = f"warm-up {attempt + warmup + 1}/{warmup}" if attempt < 0 else f"run {attempt + 1}/{repeats}"
            _progress(f"  {m.name:6} {label}: {run.wall_s:.3f} s wall, {run.session_s:.2f} s in pytest")
            if attempt >= 0:
                m.runs.append(run)
    return measured


def count_instructions(project: Path, tests: int) -> dict[str, int]:
    """Each configuration once under callgrind, in parallel: {name: instructions executed}."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise RunFailed("--instructions needs valgrind (Debian: apt-get install valgrind)")
    running = []
    for name, _description, extra in CONFIGURATIONS:
        command = [valgrind, "--tool=callgrind", "--callgrind-out-file=/dev/null", *pytest_command(extra)]
        process = subprocess.Popen(
            command, cwd=project, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env()
        )
        running.append((name, command, process))
    counts: dict[str, int] = {}
    for name, command, process in running:
        stdout, stderr = process.communicate()
        check_passed(subprocess.CompletedProcess(command, process.returncode, stdout, stderr), command, tests)
        found = _COLLECTED.findall(stderr)
        if not found:
            raise RunFailed(f"callgrind printed no instruction count for {name}:\n{stderr[-2000:]}")
        counts[name] = int(found[-1])
        _progress(f"  {name:6} under callgrind: {counts[name]:,} instructions")
    return counts


# --------------------------------------------------------------------------------------------
# the profile


@dataclass
class ProfileSummary:
    total_s: float
    wall_s: float
    rows: list[list[str]]
    own_s: float
    builder_calls: int | None


def _package_dirs(names: Sequence[str]) -> list[str]:
    dirs: list[str] = []
    for name in names:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations:
            dirs.extend(str(Path(location).resolve()) + os.sep for location in spec.submodule_search_locations)
    return dirs


def _short(filename: str, lineno: int, function: str) -> str:
    parts = Path(filename).parts
    for package in PROFILE_MODULES:
        if package in parts:
            index = len(parts) - 1 - parts[::-1].index(package)
            return f"{'/'.join(parts[index:])}:{lineno}({function})"
    return f"{filename}:{lineno}({function})"


def profile(project: Path, tests: int, out: Path) -> ProfileSummary:
    """Run ``report`` once under cProfile; the top functions of the plugin and vcrpy by cumulative time."""
    extra = dict((name, e) for name, _, e in CONFIGURATIONS)["report"]
    command = [sys.executable, "-m", "cProfile", "-o", str(out), "-m", "pytest", *COMMON_ARGS, *extra]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=project, capture_output=True, text=True, env=child_env(), check=False)
    wall = time.perf_counter() - started
    check_passed(done, command, tests)

    stats = pstats.Stats(str(out))
    raw = stats.stats  # type: ignore[attr-defined]  # {(file, line, name): (cc, nc, tt, ct, callers)}
    dirs = _package_dirs(PROFILE_MODULES)

    def ours(filename: str) -> bool:
        try:
            resolved = str(Path(filename).resolve())
        except (OSError, ValueError):
            return False
        return any(resolved.startswith(d) for d in dirs)

    selected = [(key, value) for key, value in raw.items() if ours(key[0])]
    selected.sort(key=lambda item: item[1][3], reverse=True)
    rows = []
    for (filename, lineno, function), (primitive, calls, tottime, cumtime, _callers) in selected[:PROFILE_TOP]:
        ncalls = str(calls) if calls == primitive else f"{calls}/{primitive}"
        rows.append([ncalls, f"{tottime:.3f}", f"{cumtime:.3f}", _short(filename, lineno, function)])
    builder = [
        value[1]
        for (filename, _lineno, function), value in raw.items()
        if function == VCR_BUILDER[1] and filename.replace(os.sep, "/").endswith(VCR_BUILDER[0])
    ]
    return ProfileSummary(
        total_s=float(stats.total_tt),  # type: ignore[attr-defined]
        wall_s=wall,
        rows=rows,
        own_s=sum(value[2] for _key, value in selected),
        builder_calls=sum(builder) if builder else None,
    )


# --------------------------------------------------------------------------------------------
# the driver


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _versions() -> str:
    return (
        f"Python {platform.python_version()} ({platform.python_implementation()}), pytest {_version('pytest')}, "
        f"pytest-tokenbudget {_version('pytest-tokenbudget')}, vcrpy {_version('vcrpy')}, "
        f"anthropic {_version('anthropic')}, {platform.system()} {platform.machine()}, CPUs: {os.cpu_count()}"
    )


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], *, left: Sequence[int] = ()) -> str:
    widths = [max(len(header[i]), *(len(row[i]) for row in rows)) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return " | ".join(
            c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    lines = [line(header), "-+-".join("-" * w for w in widths), *(line(row) for row in rows)]
    return "\n".join(text.rstrip() for text in lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--tests", type=int, default=2000, metavar="N", help="trivial tests (default: 2000)")
    parser.add_argument(
        "--layout",
        choices=["parametrized", "functions"],
        default="parametrized",
        help="one parametrized test function (default), or N separate functions",
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per configuration (default: 5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs per configuration first (default: 1)")
    parser.add_argument(
        "--max-ratio",
        type=float,
        default=1.10,
        help="largest accepted min wall time of --token-budget over -p no:tokenbudget (default: 1.10)",
    )
    parser.add_argument("--no-check", action="store_true", help="print the numbers; always exit 0")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also run --token-budget once under cProfile and list the plugin's and vcrpy's top "
        f"{PROFILE_TOP} functions by cumulative time",
    )
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="also count each configuration's instructions under valgrind's callgrind (repeatable "
        "where wall time is not); the exit status then judges that ratio",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary project (and the profile)")
    args = parser.parse_args(argv)
    if args.tests < 1 or args.repeats < 1 or args.warmup < 0:
        parser.error("--tests and --repeats must be >= 1, --warmup >= 0")

    project = Path(tempfile.mkdtemp(prefix="api_free_overhead-"))
    try:
        write_project(project, args.tests, args.layout)
        print(_versions())
        print(
            f"project: {args.tests} trivial tests ({args.layout}) in {project}; {time.strftime('%Y-%m-%d %H:%M:%S %Z')}"
        )
        print(
            f"each run: {' '.join(pytest_command(()))} [extra], ANTHROPIC_API_KEY unset; "
            f"{args.repeats} timed runs per configuration after {args.warmup} warm-up, taking turns"
        )
        sys.stdout.flush()
        try:
            check_disabling(project)
            measured = measure(project, args.tests, args.repeats, args.warmup)
            summary = profile(project, args.tests, project / "report.prof") if args.profile else None
            instructions = count_instructions(project, args.tests) if args.instructions else None
        except RunFailed as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
    finally:
        if args.keep:
            _progress(f"kept {project}")
        else:
            shutil.rmtree(project, ignore_errors=True)

    bare = measured[0]
    header = [
        "configuration",
        "extra arguments",
        "min s",
        "median s",
        "ratio (min)",
        "pytest min s",
        "pytest median s",
        "pytest ratio (min)",
    ]
    rows = []
    for m in measured:
        rows.append(
            [
                f"{m.name} ({m.description})",
                " ".join(m.extra) or "(none)",
                f"{min(m.wall):.3f}",
                f"{statistics.median(m.wall):.3f}",
                f"{min(m.wall) / min(bare.wall):.3f}x",
                f"{min(m.session):.2f}",
                f"{statistics.median(m.session):.2f}",
                f"{min(m.session) / min(bare.session):.3f}x",
            ]
        )
    print()
    print("wall time of the pytest subprocess (start-up and imports included); pytest s: its own 'in X.XXs'")
    print(_table(header, rows, left=(0, 1)))
    for m in measured:
        warned = [run.last_line for run in m.runs if "warnings" in outcomes(run.last_line)]
        if warned:
            print(f"note: {m.name}: pytest printed warnings in {len(warned)} run(s), e.g. {warned[0]!r}")

    if summary is not None:
        print()
        print(
            f"cProfile of one 'report' run: {summary.wall_s:.3f} s wall under the profiler, "
            f"{summary.total_s:.3f} s profiled; own time (tottime) in {' and '.join(PROFILE_MODULES)} "
            f"functions: {summary.own_s:.3f} s"
        )
        print(f"top {PROFILE_TOP} functions of {' / '.join(PROFILE_MODULES)} by cumulative time:")
        if summary.rows:
            print(_table(["ncalls", "tottime", "cumtime", "function"], summary.rows, left=(3,)))
        else:
            print("(none: no function of these modules was called)")
        calls = "not called" if summary.builder_calls is None else f"{summary.builder_calls} calls"
        print(f"vcr.patch.CassettePatcherBuilder.{VCR_BUILDER[1]}: {calls}")
        print("(cProfile counts each resumption of a generator as a call: a generator fixture or context manager")
        print(" shows 2 calls per test)")

    if instructions is not None:
        reference = instructions[bare.name]
        print()
        print("instructions executed under valgrind --tool=callgrind (one run each; repeatable)")
        print(
            _table(
                ["configuration", "instructions", "ratio"],
                [
                    [f"{m.name} ({m.description})", f"{count:,}", f"{count / reference:.3f}x"]
                    for m in measured
                    for count in [instructions[m.name]]
                ],
                left=(0,),
            )
        )

    ratio = min(measured[-1].wall) / min(bare.wall)
    print()
    print(
        f"API-free overhead, wall time (min of {args.repeats}): --token-budget = {ratio:.2f}x of -p no:tokenbudget "
        f"(target <= {args.max_ratio:.2f}x)"
    )
    if instructions is not None:
        ratio = instructions[measured[-1].name] / instructions[bare.name]
        print(
            f"API-free overhead, instructions: --token-budget = {ratio:.3f}x of -p no:tokenbudget "
            f"(target <= {args.max_ratio:.2f}x; this one is judged)"
        )
    if args.no_check:
        return 0
    return 0 if ratio <= args.max_ratio else 1


if __name__ == "__main__":
    sys.exit(main())
