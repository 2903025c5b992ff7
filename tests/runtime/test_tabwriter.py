"""Golden tests of the Go text/tabwriter port; expected strings follow Go's elastic-tabstop rules."""

from __future__ import annotations

import io

import pytest

from wharfd.runtime.ctr import tabwriter
from wharfd.runtime.ctr.tabwriter import Writer


def render(text: str, minwidth: int, tabwidth: int, padding: int, padchar: str = " ", flags: int = 0) -> str:
    out = io.StringIO()
    w = Writer(out, minwidth, tabwidth, padding, padchar=padchar, flags=flags)
    w.write(text)
    w.flush()
    return out.getvalue()


def test_trailing_tab_pads_last_column() -> None:
    # ctr's `namespaces ls`: every row ends in a tab, so LABELS is padded too.
    text = "NAME\tLABELS\t\ndefault\t\t\nk8s.io\ta=b,c=d\t\n"
    assert render(text, 1, 8, 1) == "NAME    LABELS  \ndefault " + " " * 8 + "\nk8s.io  a=b,c=d \n"


def test_missing_cell_breaks_the_column() -> None:
    # "default\t\n" has no LABELS cell, so the LABELS block is split around it.
    text = "NAME\tLABELS\t\ndefault\t\nk8s.io\ta=b,c=d\t\n"
    assert render(text, 1, 8, 1) == "NAME    LABELS \ndefault \nk8s.io  a=b,c=d \n"


def test_text_after_last_tab_is_not_a_column() -> None:
    # ctr's `tasks ls` rows have no trailing tab: the last field is printed as is.
    text = "TASK\tPID\tSTATUS\nweb\t123\tRUNNING\n"
    assert render(text, 4, 8, 4) == "TASK    PID    STATUS\nweb     123    RUNNING\n"


def test_minwidth() -> None:
    assert render("a\tb\t\n", 10, 8, 1) == "a         b         \n"


def test_column_block_ends_at_a_line_without_that_cell() -> None:
    text = "x\tyy\tz\nxxx\ty\tzz\nxx\t\nx\tyyyy\tw\n"
    assert render(text, 1, 8, 1) == "x   yy z\nxxx y  zz\nxx  \nx   yyyy w\n"


def test_width_counts_code_points_like_runes() -> None:
    text = "名前\tx\t\nab\ty\t\nü\tz\t\n"
    assert render(text, 1, 8, 1) == "名前 x \nab y \nü  z \n"


def test_tab_padchar_rounds_to_tab_stops() -> None:
    # ctr's `content ls` writer: NewWriter(os.Stdout, 1, 8, 1, '\t', 0).
    text = "DIGEST\tSIZE\tAGE\tLABELS\nsha256:0123456789ab\t12 B\t2 hours\t-\n"
    assert render(text, 1, 8, 1, "\t") == (
        "DIGEST\t\t\tSIZE\tAGE\tLABELS\nsha256:0123456789ab\t12 B\t2 hours\t-\n"
    )


def test_tab_padchar_exact_multiple_needs_another_stop() -> None:
    # 8 characters plus padding 1 is 9: the column spans two tab stops.
    assert render("abcdefgh\tx\nabcdefg\ty\n", 1, 8, 1, "\t") == "abcdefgh\tx\nabcdefg\t\ty\n"


def test_tab_padchar_with_zero_tabwidth_cannot_pad() -> None:
    assert render("a\tb\n", 0, 0, 1, "\t") == "ab\n"


def test_tab_padchar_forces_left_alignment() -> None:
    assert render("a\tb\nccc\td\n", 0, 8, 1, "\t", tabwriter.ALIGN_RIGHT) == "a\tb\nccc\td\n"


def test_align_right_and_debug_bars() -> None:
    text = "a\tbb\tc\nccc\td\t\n"
    flags = tabwriter.ALIGN_RIGHT | tabwriter.DEBUG
    assert render(text, 0, 0, 1, ".", flags) == "...a|.bb|c\n.ccc|..d|\n"


def test_discard_empty_soft_columns() -> None:
    text = "a\v\vb\nc\v\vd\n"
    assert render(text, 0, 8, 1, " ", tabwriter.DISCARD_EMPTY_COLUMNS) == "a b\nc d\n"
    assert render(text, 0, 8, 1) == "a  b\nc  d\n"
    # Hard tabs keep an empty column even when discarding.
    assert render("a\t\tb\n", 0, 8, 1, " ", tabwriter.DISCARD_EMPTY_COLUMNS) == "a  b\n"


def test_tab_indent_pads_leading_empty_cells_with_tabs() -> None:
    text = "\tx\ty\n\tlonger\tz\n"
    assert render(text, 0, 8, 1, " ", tabwriter.TAB_INDENT) == "\tx      y\n\tlonger z\n"


def test_formfeed_ends_columns() -> None:
    assert render("aaaa\tb\nc\td\n", 1, 8, 1) == "aaaa b\nc    d\n"
    assert render("aaaa\tb\fc\td\n", 1, 8, 1) == "aaaa b\nc d\n"


def test_single_cell_line_flushes_what_is_above() -> None:
    out = io.StringIO()
    w = Writer(out, 1, 8, 1)
    w.write("a\tb\t\nccc\t")
    assert out.getvalue() == ""
    w.write("d\t\nplain line\nnext\t")
    # The plain line cannot influence later columns, so everything up to it is out.
    assert out.getvalue() == "a   b \nccc d \nplain line\n"
    w.flush()
    # A trailing tab with nothing after it leaves a single cell: no column, no padding.
    assert out.getvalue() == "a   b \nccc d \nplain line\nnext"


def test_unterminated_text_is_printed_on_flush_without_newline() -> None:
    assert render("x\ty", 1, 8, 1) == "x y"
    assert render("", 1, 8, 1) == ""


def test_writes_may_split_cells_anywhere() -> None:
    text = "NAME\tLABELS\t\ndefault\t\t\nk8s.io\ta=b,c=d\t\n"
    out = io.StringIO()
    w = Writer(out, 1, 8, 1)
    for ch in text:
        w.write(ch)
    w.flush()
    assert out.getvalue() == render(text, 1, 8, 1)


def test_writer_is_reusable_after_flush() -> None:
    out = io.StringIO()
    w = Writer(out, 1, 8, 1)
    w.write("long name\tx\t\n")
    w.flush()
    w.write("a\tb\t\n")
    w.flush()
    assert out.getvalue() == "long name x \na b \n"


def test_bad_parameters() -> None:
    with pytest.raises(ValueError, match="negative"):
        Writer(io.StringIO(), -1, 8, 1)
    with pytest.raises(ValueError, match="single"):
        Writer(io.StringIO(), 1, 8, 1, padchar="  ")
