"""What the benchmark scripts print alike: versions, the CPU, tables, profile names."""

from __future__ import annotations

import importlib.metadata
import platform
from collections.abc import Sequence
from pathlib import Path

__all__ = ["component", "cpu_model", "short", "table", "version"]


def version(dist: str) -> str:
    """The installed version of a distribution, or ``not installed``."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def cpu_model() -> str:
    """The CPU's model name."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def table(title: str, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A fixed-width table: first column left-aligned, the others right-aligned."""
    widths = [max(len(h), *(len(r[c]) for r in rows)) for c, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        out = [cells[0].ljust(widths[0])]
        out += [cell.rjust(width) for cell, width in zip(cells[1:], widths[1:], strict=True)]
        return "  ".join(out).rstrip()

    rule = "-" * len(line(headers))
    return "\n".join([title, rule, line(headers), rule, *(line(r) for r in rows), rule])


def component(file: str) -> str:
    """A short owner name for a profiled function's file."""
    path = file.replace("\\", "/")
    if "/bench/" in path:
        return "bench harness"
    if "/thinktank/" in path and "site-packages" not in path:
        module = path.rsplit("/thinktank/", 1)[1].removesuffix(".py").replace("/", ".")
        return f"thinktank.{module}"
    if "site-packages/" in path:
        package = path.split("site-packages/", 1)[1].split("/", 1)[0].removesuffix(".py")
        return "pydantic" if package.startswith("pydantic") else package
    if "/python3." in path:
        rest = path.split("/python3.", 1)[1].split("/", 1)[1]
        return rest.split("/", 1)[0].removesuffix(".py")
    return path


def short(file: str, line: int, func: str) -> str:
    """A profiled function as ``component:line(name)`` (C builtins by name alone)."""
    return func if file == "~" else f"{component(file)}:{line}({func})"
