"""Numba CPU kernels: one parallel call per step over a table of tensor addresses.

Compiled code is cached on disk (``cache=True``) under a folder named by a hash of this
package's sources and of the schedule encoding. Numba keys its cache on the timestamp of
the file that holds the entry point only, so a kernel would otherwise keep running the
compiled copy of an edited helper (``_common.py``, ``schedule.py``) it inlined. The folder
is ``$NUMBA_CACHE_DIR`` when the user sets it (their choice stands), else
``$XDG_CACHE_HOME/fusedsched/numba-<hash>`` (``~/.cache`` by default); Numba's global
setting is restored after this package's dispatchers are made, so other Numba code in the
process is untouched.
"""

import hashlib
import os
from pathlib import Path

import numba


def _cache_dir():
    here = Path(__file__).parent
    digest = hashlib.sha256()
    for path in sorted(here.glob("*.py")) + [here.parent / "schedule_encoding.py"]:
        digest.update(path.name.encode() + path.read_bytes())
    digest.update(numba.__version__.encode())
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    folder = root / "fusedsched" / f"numba-{digest.hexdigest()[:16]}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:         # read-only home: Numba's own default (beside the sources)
        return None
    return str(folder) if os.access(folder, os.W_OK) else None


_saved = numba.config.CACHE_DIR
_folder = None if os.environ.get("NUMBA_CACHE_DIR") else _cache_dir()
if _folder:
    numba.config.CACHE_DIR = _folder
try:
    # Dispatchers pick their cache folder when they are made (at import), not at compile.
    from . import _common, _launch, adam, rmsprop, schedule, sgd  # noqa: F401
finally:
    numba.config.CACHE_DIR = _saved

from ._common import set_sqrt_mode, sqrt_mode  # noqa: E402  (the square-root mode, public)
