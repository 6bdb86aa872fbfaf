"""Downloads through ``torchvision.datasets``, only where a network exists and only when asked."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from zoo.data.types import DataError


def torchvision_download(name: str, root: Path, fetch: Callable[[Any], Any]) -> None:
    """Run ``fetch(torchvision.datasets)`` (a real download); any failure becomes a DataError."""
    from torchvision import datasets
    root.mkdir(parents=True, exist_ok=True)
    try:
        fetch(datasets)
    except Exception as e:  # no network, a mirror failed, a checksum differed
        raise DataError(f"downloading {name} into {root} failed ({type(e).__name__}: {e}); "
                        "pass --data-dir to a folder holding the data, or --no-download") from None
