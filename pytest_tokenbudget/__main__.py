"""``python -m pytest_tokenbudget``: the ``tokenbudget`` command."""

from .cli import main

raise SystemExit(main())
