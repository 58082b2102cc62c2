"""Sizes as people read them, in binary units (KiB, MiB, GiB, TiB), the units disks,
``du`` and ClickHouse's ``formatReadableSize`` use. Pure."""

from __future__ import annotations

__all__ = ["binary_size"]


def binary_size(n: float) -> str:
    """``1536`` -> ``'1.5 KiB'``; bytes whole, the rest with one decimal; keeps a sign."""
    sign, value = ("-" if n < 0 else ""), abs(float(n))
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{sign}{value:.0f} {unit}" if unit == "B" else f"{sign}{value:.1f} {unit}"
        value /= 1024
    return f"{sign}{value:.1f} TiB"
