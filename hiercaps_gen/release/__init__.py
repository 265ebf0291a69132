"""Releases: write (`write`), read with checksums (`read`), the typed manifest (`manifest`), the
dataset card and its statistics (`card`, `stats`), `export` to the authors' CSV, `pull` and `push`.

The names most callers need are re-exported here.
"""

from hiercaps_gen.release.read import ReleaseError, read_release, split_files, verify_release
from hiercaps_gen.release.write import build_release, write_release

__all__ = ["ReleaseError", "build_release", "read_release", "split_files", "verify_release", "write_release"]
