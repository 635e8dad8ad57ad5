"""Checks every part of the typed configuration uses: finite numbers, counts, seeds, memory, one-line errors.

Below both config.py (the loop's keys) and the families (their own keys), so a family checks its schema
with these without importing the run configuration.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import MISSING as NO_DEFAULT
from dataclasses import fields, is_dataclass
from enum import Enum
from typing import Any

import numpy as np

from collapse_cli.errors import CollapseError

try:
    from enum import StrEnum
except ImportError:  # Python 3.10: the same behaviour, str() and format() give the value

    class StrEnum(str, Enum):
        def __str__(self) -> str:
            return str(self.value)


# float32 ends at 3.4e38: train.lr=1e39 was an overflow traceback inside torch's Adam.
MAX_FLOAT = 1e30
# Counts that only cost time (resamples, sequences scored): above this a value is a typo, not a plan.
MAX_COUNT = 100_000


def check(ok: bool, message: str) -> None:
    if not ok:
        raise CollapseError(message)


def fail_range(key: str, value: Any, allowed: str, fix: str) -> None:
    raise CollapseError(f"{key}={value!r} must be {allowed}; {fix}")


def is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _default_of(parent: Any, name: str) -> str:
    """The schema's default of a field, for the fix in a message ("" when it has none)."""
    for spec in fields(parent):
        if spec.name == name:
            default = spec.default if spec.default is not NO_DEFAULT else None
            return f" (the default is {default})" if isinstance(default, (int, float)) else ""
    return ""


def check_finite(node: Any, prefix: str = "") -> None:
    """Every float of the typed config, nested dataclasses and lists included, is finite and within ±MAX_FLOAT.

    inf and nan pass OmegaConf's types and most range checks (inf > 0), then surface as a
    traceback deep inside sklearn or torch, or as a run that "finishes" with inf metrics.
    """
    items = ([(spec.name, getattr(node, spec.name)) for spec in fields(node)] if is_dataclass(node)
             else list(node.items()) if isinstance(node, Mapping)
             else list(enumerate(node)) if isinstance(node, (list, tuple)) else [])
    for name, value in items:
        key = f"{prefix}[{name}]" if isinstance(name, int) else f"{prefix}{'.' if prefix else ''}{name}"
        hint = _default_of(node, name) if is_dataclass(node) else ""
        if isinstance(value, (float, np.floating)) and not math.isfinite(value):
            raise CollapseError(f"{key}={value} is not a finite number; give a finite value{hint}")
        if isinstance(value, (float, np.floating)) and abs(value) > MAX_FLOAT:
            raise CollapseError(f"{key}={value} is beyond ±{MAX_FLOAT:g}, where torch's float32 overflows; "
                                f"give a value of a sensible scale{hint}")
        if isinstance(value, (list, tuple, Mapping)) or is_dataclass(value):
            check_finite(value, key)


def machine_memory() -> int:
    """This machine's physical memory in bytes (1 TiB where the system does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 2**40


def check_memory(need_bytes: float, what: str, fix: str) -> None:
    """Refuse, before any folder exists, a size whose smallest allocation exceeds the machine's memory:
    `need_bytes` counts only what the run cannot avoid holding at once, so a refusal is never a false alarm."""
    have = machine_memory()
    if need_bytes > have:
        raise CollapseError(f"{what} needs at least {need_bytes / 2**30:,.0f} GiB of memory, more than this "
                            f"machine's {have / 2**30:,.0f} GiB; {fix}")


def keys_text(group: str, node: Any, names: tuple[str, ...]) -> str:
    """`model.hidden=256, model.latent=20`: the keys a size estimate read, as the user sets them."""
    return ", ".join(f"{group}.{name}={getattr(node, name)}" for name in names)


def check_count(key: str, value: int, ceiling: int = MAX_COUNT) -> None:
    """A count that costs time, not memory: the documented ceiling catches a typo (1e8 for 1e3)."""
    check(value <= ceiling, f"{key}={value} is above {ceiling:,}, its ceiling; lower it")


def check_seed(key: str, seed: int) -> None:
    """Seeds feed numpy's SeedSequence and torch.manual_seed: non-negative, and 32 bits is plenty."""
    check(0 <= seed < 2**32, f"{key}={seed} must be an integer from 0 to {2**32 - 1}")
