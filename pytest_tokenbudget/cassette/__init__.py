"""Cassettes: reading any vcrpy recording, and writing ours.

Three formats are read:

* **vcrpy** cassettes, as plain vcrpy, pytest-recording and custom serializers write them, YAML
  or JSON: each body found by its shape under whatever key holds it (``body.string``,
  ``parsed_body``, a mapping...), as text, YAML ``!!binary`` (base64), ``base64_string``,
  gzip/deflate/br/zstd-compressed, or as the old httpx layout (``status_code``/``content``).
* **HAR 1.2** files (Polly.js, Playwright, browser devtools): their Anthropic API entries.
* **pytest-tokenbudget** cassettes (``format: pytest-tokenbudget/1``), written by this plugin.
  JSON bodies are stored parsed, so a prompt reads as YAML and a change shows as a small diff. A
  request that extends an earlier one (an agent turn re-sends the transcript and adds to it) is
  stored as ``extends: N`` plus the few operations that turn request N into this one, so a
  cassette grows with the transcript, not with its square. Every stored body is checked to
  rebuild byte for byte when written; one that would not is stored verbatim.

:data:`vcr_serializer` exposes the format through vcrpy's serializer interface, and
:class:`TokenBudgetPersister` through its persister interface (atomic writes; a corrupt file is
an error, never an empty cassette).

The modules: ``_model`` (bodies, interactions, cassettes, and how stored bodies are rebuilt),
``_shape`` (finding a body by its shape, undoing its encodings), ``_har`` (HAR files), ``_read``
(every format in), ``_write`` (our format out), ``_vcr`` (the vcrpy interfaces). Import from this
package, not from them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._model import FORMAT, Body, Cassette, Interaction, endpoint_of

# isort: split
from ._model import REDACTED as REDACTED  # public, not in ``__all__``
from ._model import _Encoder as _Encoder  # private, for the package's own modules and tests
from ._model import apply_ops as apply_ops

if TYPE_CHECKING:
    from ._read import _decompress as _decompress
    from ._read import iter_cassette_files as iter_cassette_files
    from ._read import load_cassette, parse_cassette
    from ._vcr import TokenBudgetPersister, vcr_serializer
    from ._vcr import _from_vcr_dict as _from_vcr_dict
    from ._write import diff_ops as diff_ops
    from ._write import dump_cassette, save_cassette

# The readers and writers (and YAML) load when first used: a test with no cassette needs none.
_LAZY = {
    "_decompress": "_read",
    "iter_cassette_files": "_read",
    "load_cassette": "_read",
    "parse_cassette": "_read",
    "TokenBudgetPersister": "_vcr",
    "vcr_serializer": "_vcr",
    "_from_vcr_dict": "_vcr",
    "diff_ops": "_write",
    "dump_cassette": "_write",
    "save_cassette": "_write",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


__all__ = [
    "FORMAT",
    "Body",
    "Cassette",
    "Interaction",
    "TokenBudgetPersister",
    "dump_cassette",
    "endpoint_of",
    "load_cassette",
    "parse_cassette",
    "save_cassette",
    "vcr_serializer",
]
