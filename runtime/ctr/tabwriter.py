"""Aligned columns the way Go's ``text/tabwriter`` lays them out, so tables match ctr's byte for byte.

The model (elastic tabstops): text is split into *cells*. A cell ends at a
``\\t`` (hard tab), a ``\\v`` (soft tab) or a line break (``\\n``, or ``\\f``
which also ends every open column). Tab-terminated cells at the same index in
*contiguous* lines form a column block, and every cell of a block is padded to
the block's width: ``max(minwidth, widest cell + padding)``. The last cell of
a line (text after its final tab) never belongs to a column and is printed
as is. Hence a trailing ``\\t``, as ctr writes in most headers and rows, pads
the last real column with trailing padding characters.

Widths count code points, as Go counts runes. With ``padchar='\\t'`` a cell
is padded with tabs to the next multiple of ``tabwidth`` that reaches the
column width, and alignment is always left. The ``Escape`` and ``FilterHTML``
modes of Go's writer are not supported: ctr never uses them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TextIO

# Flags, with Go's values so call sites read the same.
ALIGN_RIGHT = 1 << 2
DISCARD_EMPTY_COLUMNS = 1 << 3
TAB_INDENT = 1 << 4
DEBUG = 1 << 5


@dataclass(frozen=True)
class _Cell:
    text: str
    # True when ended by a hard tab; only soft-tab (or line-end) cells may be discarded.
    htab: bool

    @property
    def width(self) -> int:
        return len(self.text)


class Writer:
    """Buffer tab-separated text and print it aligned on :meth:`flush`.

    ``Writer(out, 1, 8, 1)`` is ctr's ``tabwriter.NewWriter(os.Stdout, 1, 8, 1, ' ', 0)``;
    ``Writer(out, 1, 8, 1, padchar="\\t")`` its tab-padded variant.
    """

    def __init__(
        self,
        output: TextIO,
        minwidth: int,
        tabwidth: int,
        padding: int,
        *,
        padchar: str = " ",
        flags: int = 0,
    ) -> None:
        if minwidth < 0 or tabwidth < 0 or padding < 0:
            raise ValueError("negative minwidth, tabwidth, or padding")
        if len(padchar) != 1:
            raise ValueError("padchar must be a single character")
        self._out = output
        self._minwidth = minwidth
        self._tabwidth = tabwidth
        self._padding = padding
        self._padchar = padchar
        # Padding with tabs cannot right-align: the viewer decides where tabs end.
        self._flags = flags & ~ALIGN_RIGHT if padchar == "\t" else flags
        self._reset()

    def _reset(self) -> None:
        self._lines: list[list[_Cell]] = [[]]
        self._cell: list[str] = []
        self._widths: list[int] = []
        self._pieces: list[str] = []

    def write(self, text: str) -> int:
        """Buffer ``text``; complete lines are printed as soon as no later line can change them."""
        start = 0
        for i, ch in enumerate(text):
            if ch not in "\t\v\n\f":
                continue
            self._cell.append(text[start:i])
            start = i + 1
            ncells = self._end_cell(htab=ch == "\t")
            if ch in "\n\f":
                self._lines.append([])
                # A line holding a single cell ends every column block above it,
                # so what is buffered so far can be printed already.
                if ch == "\f" or ncells == 1:
                    self.flush()
                    if ch == "\f" and self._flags & DEBUG:
                        self._out.write("---\n")
        self._cell.append(text[start:])
        return len(text)

    def flush(self) -> None:
        """Print everything buffered; call once after the last :meth:`write`."""
        try:
            if any(self._cell):
                self._end_cell(htab=False)
            self._format(0, len(self._lines))
            self._out.write("".join(self._pieces))
        finally:
            self._reset()

    def _end_cell(self, *, htab: bool) -> int:
        line = self._lines[-1]
        line.append(_Cell("".join(self._cell), htab))
        self._cell = []
        return len(line)

    # Formatting: a column block starts at the first line that has a cell in
    # the column to the right of those already measured; it runs while
    # following lines have one too. Its width is pushed, the lines of the
    # block are formatted recursively for the columns further right, and the
    # width is popped again, so each line is printed with the widths of the
    # blocks it belongs to.
    def _format(self, line0: int, line1: int) -> None:
        column = len(self._widths)
        this = line0
        while this < line1:
            if column >= len(self._lines[this]) - 1:
                this += 1
                continue
            self._emit(line0, this)
            line0 = this
            width = self._minwidth
            discardable = True
            while this < line1 and column < len(self._lines[this]) - 1:
                cell = self._lines[this][column]
                width = max(width, cell.width + self._padding)
                if cell.width > 0 or cell.htab:
                    discardable = False
                this += 1
            if discardable and self._flags & DISCARD_EMPTY_COLUMNS:
                width = 0
            self._widths.append(width)
            self._format(line0, this)
            self._widths.pop()
            line0 = this
        self._emit(line0, line1)

    def _emit(self, line0: int, line1: int) -> None:
        out = self._pieces
        for i in range(line0, line1):
            line = self._lines[i]
            use_tabs = bool(self._flags & TAB_INDENT)
            for j, cell in enumerate(line):
                if j > 0 and self._flags & DEBUG:
                    out.append("|")
                width = self._widths[j] if j < len(self._widths) else None
                if not cell.text:
                    if width is not None:
                        out.append(self._pad(0, width, use_tabs=use_tabs))
                    continue
                use_tabs = False
                pad = "" if width is None else self._pad(cell.width, width, use_tabs=False)
                out.append(pad + cell.text if self._flags & ALIGN_RIGHT else cell.text + pad)
            # The final buffered line has no line break yet: the open cell is
            # already its last cell (flush ended it), so nothing more follows.
            if i + 1 < len(self._lines):
                out.append("\n")

    def _pad(self, textw: int, cellw: int, *, use_tabs: bool) -> str:
        if self._padchar == "\t" or use_tabs:
            if self._tabwidth == 0:
                return ""  # a tab of no width cannot pad anything
            # Tabs stop at multiples of tabwidth: round the cell up to one.
            cellw = -(-cellw // self._tabwidth) * self._tabwidth
            return "\t" * -(-(cellw - textw) // self._tabwidth)
        return self._padchar * (cellw - textw)
