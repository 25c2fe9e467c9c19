"""textwidth.py: columns a text takes on a terminal, and padding/cutting by columns, which keep
the eval and runs tables aligned for names in any script."""

from __future__ import annotations

from cnncli import textwidth


def test_width_counts_wide_as_two_combining_as_none():
    assert textwidth.width("cat") == 3
    assert textwidth.width("猫") == 2                       # East Asian wide
    assert textwidth.width("ＡＢ") == 4                     # full-width Latin
    assert textwidth.width("e\u0301clair") == 6             # e + combining acute: one column
    assert textwidth.width("a\u200bb") == 2                 # zero-width space (Cf)
    assert textwidth.width("") == 0


def test_fit_cuts_by_columns_and_never_splits_past_the_limit():
    assert textwidth.fit("cat", 5) == "cat"
    assert textwidth.fit("犬の子ども", 10) == "犬の子ども"
    assert textwidth.fit("犬の子ども", 7) == "犬の子~"       # 6 columns + '~'
    assert textwidth.fit("犬の子ども", 6) == "犬の~"         # a wide character that would end at 7 is left out
    assert textwidth.fit("abcdef", 4) == "abc~"
    assert textwidth.fit("猫猫", 2) == "~"                   # no room for a wide character and '~'
    assert textwidth.fit("e\u0301e\u0301e\u0301", 2) == "e\u0301~"   # an accent stays with its letter
    for text in ("犬の子ども", "abcdefgh", "e\u0301e\u0301e\u0301e\u0301"):
        for cols in range(1, 12):
            assert textwidth.width(textwidth.fit(text, cols)) <= cols


def test_ljust_and_rjust_pad_to_columns():
    assert textwidth.ljust("猫", 4) == "猫  " and textwidth.width(textwidth.ljust("猫", 4)) == 4
    assert textwidth.rjust("猫", 4) == "  猫"
    assert textwidth.ljust("toolong", 3) == "toolong"        # never cuts


def test_terminal_columns_are_columns_when_set_else_none_off_a_terminal(monkeypatch):
    import io
    import sys

    monkeypatch.setattr(sys, "stdout", io.StringIO())      # (not a terminal)
    monkeypatch.delenv("COLUMNS", raising=False)
    assert textwidth.terminal_columns() is None             # (a pipe, a file: the full width)
    for value, expected in (("40", 40), (" 72 ", 72), ("0", None), ("wide", None), ("", None)):
        monkeypatch.setenv("COLUMNS", value)
        assert textwidth.terminal_columns() == expected, value
