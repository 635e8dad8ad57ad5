"""The terminal, set up once for every command: one console, one way to write a number."""

from __future__ import annotations

import math
import sys
from typing import Optional


def error_line(message: str) -> int:
    """The one line a command says for bad input or a failed run (on stderr); returns the exit code, 2."""
    print(f"collapse: error: {message}", file=sys.stderr)
    return 2


def make_console():
    """A rich console; in logs and pipes wide enough that tables keep their full column names."""
    from rich.console import Console

    console = Console()
    if not console.is_terminal:
        console.width = max(console.width, 160)
    return console


def fmt(value: Optional[float], digits: int = 4, blank: str = "") -> str:
    """`digits` significant digits, in plain notation unless the number is very large or small;
    `blank` for a missing value (None or nan). Text passes through."""
    if isinstance(value, str):
        return value
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return blank
    if isinstance(value, float) and math.isfinite(value):
        value = float(f"{value:.{digits}g}")  # round first: 9.99999 is "10", not "10.000"
    if isinstance(value, int) or (math.isfinite(value) and value == int(value) and abs(value) < 1e6):
        return str(int(value))
    if not math.isfinite(value) or not 1e-3 <= abs(value) < 1e6:
        return f"{value:.{digits}g}"
    return f"{value:.{max(0, digits - 1 - math.floor(math.log10(abs(value))))}f}"
