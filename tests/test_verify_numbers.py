"""Verifiers read numbers as people and models write them (issue 14, kind 4): one table of written
forms, each checked with `last-int` (last number in the text) and `toy-int` (`Answer: N`)."""

from __future__ import annotations

import pytest

from train.rollouts.verify import VERIFIERS, numbers, reference_int

# (written form, the integer it means, or None where it is no integer)
FORMS = [
    ("42", 42),
    ("-7", -7),
    ("+7", 7),
    ("\u22127", -7),  # MINUS SIGN
    ("\u20137", -7),  # EN DASH
    ("\u20127", -7),  # FIGURE DASH
    ("\u20107", -7),  # HYPHEN
    ("\uff0d7", -7),  # FULLWIDTH HYPHEN-MINUS
    ("\ufe637", -7),  # SMALL HYPHEN-MINUS
    ("\uff11\uff12\uff13", 123),  # FULLWIDTH DIGITS
    ("\uff0d\uff11\uff12", -12),
    ("\u0661\u0662\u0663", 123),  # ARABIC-INDIC DIGITS
    ("\u06f4\u06f5", 45),  # EXTENDED ARABIC-INDIC (Persian)
    ("\u0967\u0968", 12),  # DEVANAGARI
    ("1,234", 1234),
    ("1,234,567", 1234567),
    ("\u22121,234", -1234),
    ("1'234'567", 1234567),  # Swiss apostrophe
    ("1\u2019234", 1234),  # RIGHT SINGLE QUOTATION MARK as apostrophe
    ("1\u00a0234", 1234),  # NO-BREAK SPACE
    ("1\u2009234\u2009567", 1234567),  # THIN SPACE
    ("1\u202f234", 1234),  # NARROW NO-BREAK SPACE
    ("1\u2007234", 1234),  # FIGURE SPACE
    ("\u0661\u066c\u0662\u0663\u0664", 1234),  # Arabic thousands separator
    ("12,34,567", 1234567),  # Indian grouping
    ("1.234.567", 1234567),  # dots, two or more groups
    ("12.0", 12),
    ("12.00", 12),
    ("\u0661\u0662\u066b\u0660", 12),  # Arabic decimal separator
    ("3.5", None),
    ("\u22120.5", None),
]


@pytest.mark.parametrize("written,value", FORMS, ids=[ascii(f) for f, _ in FORMS])
def test_last_int_and_toy_int_read_written_forms(written, value):
    if value is None:
        assert numbers(written)[-1].denominator != 1
        assert VERIFIERS["last-int"](f"so it is {written}", "3") == (0.0, False)
        assert VERIFIERS["toy-int"](f"Answer: {written}", "3") == (0.0, False)
        return
    assert numbers(written) == [value]
    for ref in (str(value), f"Answer: {value}", written):
        assert reference_int(ref) == value
        assert VERIFIERS["last-int"](f"The total is {written}.", ref) == (1.0, True)
        assert VERIFIERS["last-int"](f"The total is {written}.", str(value + 1)) == (0.0, False)
        assert VERIFIERS["toy-int"](f"step\nAnswer: {written}\n", ref) == (1.0, True)
        assert VERIFIERS["toy-int"](f"Answer: {written}", str(value + 1)) == (0.0, False)


# Text around numbers that must not change them: operators, ranges, lists, sentence ends.
CONTEXTS = [
    ("7-5=2", [7, 5, 2]),  # a hyphen between digits is subtraction, not a sign
    ("x\u22123", [3]),  # a minus touching a letter is an operator
    ("pages 10\u201320", [10, 20]),  # an en dash between numbers is a range
    ("1, 2, 3", [1, 2, 3]),
    ("1,2,3", [1, 2, 3]),  # groups of one digit are a list, not thousands
    ("1,2345", [1, 2345]),
    ("So 7.", [7]),
    ("x\u00b2 = 49", [49]),  # a superscript is no digit
    ("Answer\uff1a \uff14\uff12", [42]),
    ("(\u22123)", [-3]),
]


@pytest.mark.parametrize("text,values", CONTEXTS, ids=[ascii(t) for t, _ in CONTEXTS])
def test_numbers_in_context(text, values):
    assert numbers(text) == values


def test_toy_int_takes_bold_and_fullwidth_colon():
    assert VERIFIERS["toy-int"]("**Answer:** \u221212", "-12") == (1.0, True)
    assert VERIFIERS["toy-int"]("Answer\uff1a\uff14\uff12", "42") == (1.0, True)


@pytest.mark.parametrize("bad", ["seven", "3.5", "1 2", ""])
def test_reference_that_is_no_integer_is_refused(bad):
    with pytest.raises(ValueError, match="not an integer"):
        reference_int(bad)
