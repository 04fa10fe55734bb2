"""Curation command line: ``python -m datasets.disco_mv VIDEOS --out DIR --config PRESET ...`` (repository root only).

The command lives in :mod:`vmas.disco_mv` (``python -m vmas.disco_mv``, from any folder: the wheel ships no top-level
``datasets`` package). This module *is* that module when imported; run as a script it calls its ``main``.
"""
import sys

from vmas import disco_mv as _disco_mv

if __name__ == "__main__":
    sys.exit(_disco_mv.main())
sys.modules[__name__] = _disco_mv
