"""Lets the example tests import support_agent.py from this folder."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

# examples/levers is a suite of its own (its own pytest.ini, cassettes and baseline): run it with
# ``pytest examples/levers --token-budget``. README command 1 leaves it out.
collect_ignore = ["levers"]
