"""``tokenbudget gate`` and ``tokenbudget comment``: the gate and the pull request comment from files.

    tokenbudget gate tokenbudget-baseline.json report.json    # exit 0 pass, 1 fail, 4 unreadable file
    tokenbudget comment report.json --baseline base.json      # post or update the PR comment

``cli.py`` declares the arguments (:func:`add_gate_arguments`, :func:`add_comment_arguments`) and
calls :func:`run_gate` / :func:`run_comment`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TextIO

from ._gate import EXIT_OK, EXIT_USAGE, judge_files, read_report
from ._github import MARKER, Posted, post_sticky_comment, pull_request_from_env
from .baseline import load_baseline
from .budgets import parse_overrides
from .errors import TokenBudgetError
from .pricing import Pricer
from .reports._width import terminal_width
from .reports.comment import render_comment, summarize
from .reports.terminal import render_gate

__all__ = ["add_comment_arguments", "add_gate_arguments", "run_comment", "run_gate"]


def add_gate_arguments(parser: argparse.ArgumentParser) -> None:
    """``tokenbudget gate BASELINE REPORT [--threshold KEY=VALUE] [--config FILE]``."""
    parser.add_argument("baseline", type=Path, metavar="BASELINE", help="the baseline file (tokenbudget-baseline.json)")
    parser.add_argument("report", type=Path, metavar="REPORT", help="the JSON report of a run (--token-budget-json)")
    parser.add_argument(
        "--threshold",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a budget key for every test, over what the report recorded (as pytest's --token-budget-threshold): "
        "max_cost_increase=0.2, max_hit_rate_drop=0.1, fail_on_prefix_change=false...; repeatable",
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="budgets file for tests the report carries no budget for (default: tokenbudget.yaml or "
        "pyproject.toml beside the baseline)",
    )


def run_gate(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Judge the report against the baseline; print the gate's lines; pytest's exit codes."""
    out = out or sys.stdout
    try:
        overrides = parse_overrides(args.threshold, where="tokenbudget gate --threshold")
        pricer = Pricer(override_files=args.prices, timestamp_policy=args.price_at)
        verdict = judge_files(args.baseline, args.report, pricer=pricer, overrides=overrides, config_file=args.config)
    except TokenBudgetError as error:
        print(error.render(), file=sys.stderr)
        return EXIT_USAGE
    width = terminal_width()
    lines = render_gate(verdict.lines, width)[1:]  # the lines pytest prints under "gate:"
    if not verdict.checked:
        lines.append("gate: no test with API turns in the report")
    failed = len({line.test for line in verdict.lines if line.kind.value == "fail"})
    if lines:
        lines.append("")
    lines.append(
        f"tokenbudget gate: {verdict.checked} test(s) judged, "
        + (f"{failed} fail" if verdict.failed else "all pass")
        + f" (exit {verdict.exit_status})"
    )
    print("\n".join(lines), file=out)
    return verdict.exit_status


def add_comment_arguments(parser: argparse.ArgumentParser) -> None:
    """``tokenbudget comment REPORT [--baseline BASE] [--exit-code N] [--output FILE] [--no-post]``."""
    parser.add_argument("report", type=Path, metavar="REPORT", help="the JSON report of a run (--token-budget-json)")
    parser.add_argument(
        "--baseline",
        type=Path,
        metavar="FILE",
        help="the base branch's baseline to compare with (default: tokenbudget-baseline.json here)",
    )
    parser.add_argument("--exit-code", type=int, metavar="N", help="pytest's exit status (the verdict follows it)")
    parser.add_argument("--output", type=Path, metavar="FILE", help="also write the comment's Markdown here")
    parser.add_argument("--no-post", action="store_true", help="do not post: print the Markdown")


def _write_outputs(env: Mapping[str, str], values: Mapping[str, str]) -> None:
    """Append ``name=value`` lines to ``$GITHUB_OUTPUT`` (the step's outputs), when set."""
    path = env.get("GITHUB_OUTPUT")
    if not path:
        return
    with Path(path).open("a", encoding="utf-8") as handle:
        for name, value in values.items():
            handle.write(f"{name}={value}\n")


def run_comment(args: argparse.Namespace, out: TextIO | None = None, env: Mapping[str, str] | None = None) -> int:
    """Summarize the report against the base baseline, write the step's outputs, post the comment.

    Returns 0 whenever the report could be read: a comment that cannot be posted is a note, never
    a failure (the gate's step decides the job); 4 when the report cannot be read.
    """
    env = os.environ if env is None else env
    out = out or sys.stdout
    try:
        document = read_report(args.report)
    except TokenBudgetError as error:
        print(error.render(), file=sys.stderr)
        _write_outputs(env, {"verdict": "error"})
        return EXIT_USAGE
    base_path = args.baseline if args.baseline is not None else Path("tokenbudget-baseline.json")
    try:
        base = load_baseline(base_path)
    except TokenBudgetError as error:
        print(f"tokenbudget: the base baseline is not used: {error.render()}", file=out)
        base = None
    summary = summarize(document, base, exit_code=args.exit_code)
    markdown = render_comment(summary, marker=MARKER)
    change = summary.cost_change
    _write_outputs(
        env,
        {
            "report": str(args.report),
            "total-cost": "" if summary.cost is None else f"{summary.cost:.6f}",
            "cost-change": "" if change is None else f"{change:+.6f}",
            "verdict": summary.verdict,
        },
    )
    if args.output is not None:
        from ._atomic import write_atomic

        write_atomic(args.output, markdown)
    if args.no_post:
        print(markdown, file=out, end="")
        return EXIT_OK
    target = pull_request_from_env(env)
    posted = target if isinstance(target, Posted) else post_sticky_comment(target, markdown)
    if posted.action == "skipped":
        print(f"tokenbudget: no pull request comment: {posted.detail}", file=out)
        if env.get("GITHUB_ACTIONS") == "true":
            print(f"::notice title=token budget::no pull request comment: {posted.detail}", file=out)
    else:
        print(f"tokenbudget: pull request comment {posted.action}: {posted.detail}", file=out)
    _write_outputs(env, {"comment": posted.action})
    return EXIT_OK
