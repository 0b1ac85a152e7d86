"""The config file: ``tokenbudget.yaml`` (or ``[tool.tokenbudget]`` in ``pyproject.toml``).

    # tokenbudget.yaml
    defaults:                       # every test that talks to Claude
      max_cost_usd: 0.50
      max_cost_increase: 0.10       # the gate: +10% over the baseline fails
    tests:                          # node id globs, in order; later patterns win per key
      "tests/test_agent.py::test_refund*":
        max_cost_usd: 0.05
        min_cache_hit_rate: 0.6
        prefix_stable: true
    suite:                          # the whole run (see pytest_tokenbudget._suite)
      max_cost_usd: 2.00
      fail_on: ["cost:5%", "hit_rate:0.05"]   # against the baseline's totals over the same tests
    baseline: tokenbudget-baseline.json
    prices: [tokenbudget-prices.yaml]

Validated against ``schemas/config.schema.json``: a typo is an error naming the key, the file and
the line. A marker on a test wins over the file.
"""

from __future__ import annotations

import fnmatch
import re
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from ._suite import GRAMMAR, SuiteBudget, Threshold, ThresholdError, parse_thresholds
from ._validate import json_path, line_of, load_yaml, schema_problems
from .budgets import Budget
from .errors import ConfigError

__all__ = ["CONFIG_NAMES", "Config", "load_config"]

CONFIG_NAMES = ("tokenbudget.yaml", "tokenbudget.yml")


@dataclass(frozen=True)
class Config:
    """The loaded config (empty when there is no file)."""

    path: str | None = None
    defaults: Budget = field(default_factory=Budget)
    patterns: tuple[tuple[str, Budget], ...] = ()
    baseline: str | None = None
    prices: tuple[str, ...] = ()
    suite: SuiteBudget = field(default_factory=SuiteBudget)

    def budget_for(self, nodeid: str) -> Budget:
        """Defaults, then each matching pattern in file order."""
        budget = self.defaults
        for pattern, override in self.patterns:
            if fnmatch.fnmatchcase(nodeid, pattern):
                budget = override.over(budget)
        return budget


def load_config(rootdir: Path, explicit: str | None = None) -> Config:
    """Find and read the config: ``explicit``, else ``tokenbudget.yaml``, else ``pyproject.toml``.

    Raises:
        ConfigError: the file is invalid (key, file and line named).
    """
    if explicit:
        path = Path(explicit) if Path(explicit).is_absolute() else rootdir / explicit
        if path.suffix == ".toml":
            return _from_pyproject(path, required=True)
        return _from_yaml(path)
    for name in CONFIG_NAMES:
        if (rootdir / name).is_file():
            return _from_yaml(rootdir / name)
    pyproject = rootdir / "pyproject.toml"
    if pyproject.is_file():
        return _from_pyproject(pyproject, required=False)
    return Config()


def _from_yaml(path: Path) -> Config:
    data, root = load_yaml(
        path,
        "config.schema.json",
        ConfigError,
        what="token budget config",
        fix="see the format in pytest_tokenbudget.config",
    )
    if not isinstance(data, dict):
        raise ConfigError("token budget config is invalid", file=str(path), why="expected a mapping")
    return _build(data, str(path), line=lambda *keys: line_of(root, keys))


def _from_pyproject(path: Path, *, required: bool) -> Config:
    from ._yaml import MAX_CONFIG_BYTES, MAX_CONFIG_DEPTH, LoadProblem, check_depth, read_text

    try:
        text = read_text(path, max_bytes=MAX_CONFIG_BYTES)
        tool = tomllib.loads(text).get("tool")
        data = tool.get("tokenbudget") if isinstance(tool, dict) else None
        check_depth(data, MAX_CONFIG_DEPTH)
    except FileNotFoundError as err:
        raise ConfigError("the token budget config cannot be read", file=str(path), why=str(err)) from None
    except LoadProblem as problem:
        raise ConfigError(
            f"{path.name} cannot be read",
            file=f"{path}" + (f", line {problem.line}" if problem.line else ""),
            why=problem.why,
            fix="save it as UTF-8 text" if problem.why.startswith("not UTF-8") else "fix the file",
        ) from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path.name} is not valid TOML", file=str(path), why=str(err)) from None
    except RecursionError:  # tomllib recurses per nested inline array or table
        raise ConfigError(f"{path.name} is not valid TOML", file=str(path), why="nested too deeply") from None
    if data is None:
        if required:
            raise ConfigError("no [tool.tokenbudget] table", file=str(path), fix="add one, or point at a YAML file")
        return Config()
    problems = schema_problems(data, None, "config.schema.json", locate=lambda at: _toml_line(text, _last_key(at)))
    if problems:
        line, message = problems[0]
        raise ConfigError(
            "token budget config is invalid",
            file=f"{path}" + (f", line {line}" if line else ""),
            why=f"[tool.tokenbudget] {message}",
            details=[f"also: {p[1]}" for p in problems[1:]],
            fix="correct the key (the schema is pytest_tokenbudget/schemas/config.schema.json)",
        )
    return _build(
        data,
        f"{path} [tool.tokenbudget]",
        line=lambda *keys: _toml_line(text, _last_name(keys)),
    )


def _last_name(keys: tuple[str | int, ...]) -> str:
    return next((k for k in reversed(keys) if isinstance(k, str)), "")


def _last_key(path: Sequence[str | int]) -> str:
    keys = [part for part in path if isinstance(part, str)]
    return keys[-1] if keys else ""


def _toml_line(text: str, key: str) -> int | None:
    inside = False
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("["):
            inside = stripped.startswith("[tool.tokenbudget")
            if inside and key and key in stripped:
                return number
            continue
        if inside and key and re.match(rf'^\s*"?{re.escape(key)}"?\s*=', line):
            return number
    return None


def _build(data: dict[str, Any], where: str, *, line: Callable[..., int | None]) -> Config:
    defaults = Budget.from_mapping(data.get("defaults") or {}, where=f"{where}: defaults")
    patterns = tuple(
        (str(pattern), Budget.from_mapping(values or {}, where=f"{where}: tests{json_path([pattern])}"))
        for pattern, values in (data.get("tests") or {}).items()
    )
    suite = _suite(data.get("suite") or {}, where, line)
    return Config(where, defaults, patterns, data.get("baseline"), tuple(data.get("prices") or ()), suite)


def _suite(data: dict[str, Any], where: str, line: Callable[..., int | None]) -> SuiteBudget:
    """The ``suite`` section (its keys and types already checked by the schema)."""
    fail_on = data.get("fail_on") or ()
    thresholds: list[Threshold] = []
    for number, expression in enumerate([fail_on] if isinstance(fail_on, str) else fail_on):
        try:
            thresholds.extend(parse_thresholds(expression))
        except ThresholdError as error:
            at = line("suite", "fail_on", number) if not isinstance(fail_on, str) else line("suite", "fail_on")
            raise ConfigError(
                "token budget config is invalid",
                file=where + (f", line {at}" if at else ""),
                why=f"suite.fail_on: {error}",
                fix=f"write thresholds as {GRAMMAR}",
            ) from None
    cost, tokens, rate = data.get("max_cost_usd"), data.get("max_total_tokens"), data.get("min_cache_hit_rate")
    return SuiteBudget(
        max_cost_usd=Decimal(str(cost)) if cost is not None else None,
        max_total_tokens=int(tokens) if tokens is not None else None,
        min_cache_hit_rate=Decimal(str(rate)) if rate is not None else None,
        fail_on=tuple(thresholds),
    )
