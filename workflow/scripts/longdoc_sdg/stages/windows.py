"""Windows of consecutive pages for windowed QA (stage 07), built from each document's page count."""

from __future__ import annotations

from dataclasses import dataclass

# Upper page count (inclusive) -> window size. The reference compared with strict
# inequalities on both sides, so exactly 10, 20, ..., 60 pages fell through to 2.
_SIZE_BY_LENGTH = ((10, 2), (20, 3), (30, 4), (40, 5), (50, 6), (60, 7))
_LONG_DOCUMENT_SIZE = 8


def window_size_for(total_pages: int, override: int | None = None) -> int:
    """Window size for a document of `total_pages` pages, never more than the document."""
    if total_pages < 1:
        raise ValueError("a document has at least one page")
    if override is not None:
        size = override
    else:
        size = next((s for limit, s in _SIZE_BY_LENGTH if total_pages <= limit), _LONG_DOCUMENT_SIZE)
    return min(size, total_pages)


@dataclass(frozen=True)
class Window:
    start_page: int  # 1-based, inclusive
    end_page: int  # inclusive
    window_size: int


def make_windows(total_pages: int, size: int | None = None, stride: int | None = None) -> list[Window]:
    """Windows covering every page: starts at 1, 1 + stride, ...; when the pages run out
    before the last window is full, that window is shifted back to end on the last page
    (overlapping its neighbour) instead of dropping the tail as the reference does."""
    size = window_size_for(total_pages, size)
    step = min(stride or size, size)  # a stride above the size would skip pages
    windows = []
    start = 1
    while True:
        end = start + size - 1
        if end >= total_pages:
            start, end = total_pages - size + 1, total_pages
            if not windows or windows[-1].start_page != start:
                windows.append(Window(start, end, size))
            return windows
        windows.append(Window(start, end, size))
        start += step
