"""SynthMV generator command line: ``python -m datasets.synthmv --out DIR --num N ...`` (repository root only;
``python -m vmas.synthmv`` is the same command from any folder).

The generator, its labels and the SynthMV class classifier live in :mod:`vmas.synthmv`, so that the benchmarks under
``tools/`` and users of an installed wheel have them too (the wheel ships no top-level ``datasets`` package). This
module *is* that module when imported (``from datasets import synthmv`` gives :mod:`vmas.synthmv`, private helpers
included); run as a script it calls its ``main``.
"""
import sys

from vmas import synthmv as _synthmv

if __name__ == "__main__":
    sys.exit(_synthmv.main())
sys.modules[__name__] = _synthmv
