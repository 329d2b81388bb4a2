"""A progress bar for long steps (download, dequantisation) that prints nothing when not wanted."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def steps(items: Iterable[T], label: str, show: bool) -> Iterator[T]:
    """Yield items; when show, draw a rich progress bar on stderr labelled `label`."""
    if not show:
        yield from items
        return
    from rich.console import Console
    from rich.progress import track
    yield from track(items, description=label, console=Console(stderr=True), transient=True)
