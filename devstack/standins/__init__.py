"""Local servers standing in for services the devstack cannot run here (see README.md).

Each stand-in is a script, started as ``python <STANDINS>/<name>.py``; nothing imports
them as modules.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["STANDINS"]

STANDINS = Path(__file__).resolve().parent
