"""How this copy of chitchat_gen was installed, and the pip command that adds an extra to it.

Advice such as "the local engine needs xllamacpp" must give a command that works where
the user is: an editable install (or a checkout run in place) takes `pip install -e
"CHECKOUT[local]"`; a copy that pip installed into site-packages, or one vendored into another
project, has no checkout to point at, so it gets the extra's packages by name.

    >>> how_installed()[0] in ("checkout", "installed", "vendored")
    True
"""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
# The optional extras' packages, for a vendored copy, which carries no metadata to read them from
# (tests/test_docs.py checks them against pyproject.toml).
EXTRAS = {"local": ["xllamacpp>=2026.10"], "ray": ["ray[client]>=2.9"]}


def how_installed() -> tuple[str, Path | None]:
    """("checkout", its folder) when the package runs from a source tree (editable or in place),
    ("installed", None) when pip put it in site-packages, ("vendored", None) for a copy in another project."""
    checkout = PACKAGE.parent
    pyproject = checkout / "pyproject.toml"
    if pyproject.is_file() and re.search(r'^name\s*=\s*"chitchat_gen"', pyproject.read_text(encoding="utf-8"), re.M):
        return "checkout", checkout
    try:
        installed = importlib.metadata.distribution("chitchat_gen").locate_file("chitchat_gen/__init__.py")
    except importlib.metadata.PackageNotFoundError:
        return "vendored", None
    # subtle: the metadata found may be another copy's (an editable install elsewhere on the path).
    if Path(installed).resolve() == PACKAGE / "__init__.py":
        return "installed", None
    return "vendored", None


def extra_arguments(extra: str) -> str:
    """What follows `pip install` to add `extra` to this copy: `-e ".[local]"`, `"ray[client]>=2.9"`."""
    how, checkout = how_installed()
    if how == "checkout":
        where = "." if checkout == Path.cwd().resolve() else str(checkout)
        return f'-e "{where}[{extra}]"'
    requirements = EXTRAS[extra]
    if how == "installed":
        marker = re.compile(rf"""extra\s*==\s*["']{re.escape(extra)}["']""")
        requires = importlib.metadata.distribution("chitchat_gen").requires or []
        requirements = [r.split(";")[0].strip() for r in requires if marker.search(r)] or requirements
    return " ".join(f'"{r}"' if re.search(r"[<>=\[ ]", r) else r for r in requirements)


def pip_install(extra: str) -> str:
    """The whole command, e.g. `pip install -e ".[ray]"` or `pip install "ray[client]>=2.9"`."""
    return f"pip install {extra_arguments(extra)}"
