"""Atomic file writes: a crash or kill never leaves a partial file under the real name."""
import os
from pathlib import Path


def write_bytes(path, data: bytes) -> None:
    """Writes `path` (creating its folder) through a temporary name in the same folder, then
    os.replace. The temporary name is fixed per target and hidden ('.<name>.tmp': no loader
    reads it), so writing the same target again replaces a leftover of a killed run; it is
    removed on any error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path, text: str) -> None:
    """`write_bytes` of UTF-8 text."""
    write_bytes(path, text.encode("utf-8"))
