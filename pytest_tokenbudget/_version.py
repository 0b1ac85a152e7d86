"""The installed version of pytest-tokenbudget (written into baselines and reports)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("pytest-tokenbudget")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"
