"""The one way bpcompile reads TOML: `tomllib` from Python 3.11, the `tomli` backport on 3.10
(a conditional dependency in pyproject.toml). No other module imports `tomllib` itself."""

from __future__ import annotations

import sys
from types import ModuleType

from .errors import SpecError


def toml_module(what: str = "reading TOML") -> ModuleType:
    """The TOML reader module (`loads`, `load`, `TOMLDecodeError`); SpecError naming `what`
    if neither is available."""
    if sys.version_info >= (3, 11):
        import tomllib

        return tomllib
    try:
        import tomli
    except ImportError:
        raise SpecError(f"{what} needs Python 3.11+ or `pip install tomli`") from None
    return tomli
