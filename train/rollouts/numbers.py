"""Numbers as people and models write them: one reader for every verifier (`train.rollouts.verify`)
and the reasoning-gym answer extraction (`train.rollouts.reasoning_gym_tasks`)."""

from __future__ import annotations

import re
import unicodedata
from fractions import Fraction

# Numbers as people and models write them (issue 14, kind 4): any Unicode decimal digits
# (ASCII, fullwidth, Arabic-Indic, Devanagari, ...); a sign that is a hyphen-minus, minus sign U+2212,
# en/figure dash, hyphen, small/fullwidth hyphen-minus or heavy minus, and counts as a sign only where
# no letter or digit touches it on the left ("7-5" is a subtraction, "x−3" is not minus three);
# thousands groups of exactly 3 digits separated consistently by a comma, apostrophe (' or U+2019),
# no-break, thin, narrow no-break or figure space, or the Arabic thousands separator U+066C; Indian
# lakh grouping (12,34,567); dots as group separators only with two or more groups (1.234.567); a
# decimal part after '.' or the Arabic decimal separator U+066B ("12.0" is 12, "3.5" is no integer).
_MINUS = "-\u2212\u2013\u2012\u2010\u2011\ufe63\uff0d\u2796"
SIGN = f"(?P<sign>(?<![\\w.])[{_MINUS}+\uff0b])?"
_SEP = ",'\u2019\u00a0\u2009\u202f\u2007\u066c"
UNSIGNED = (
    f"(?P<int>\\d{{1,3}}(?P<sep>[{_SEP}])\\d{{3}}(?:(?P=sep)\\d{{3}})*(?!\\d)"  # 1,234,567  1 234  1'234
    "|\\d{1,2}(?:,\\d{2})+,\\d{3}(?!\\d)"  # 12,34,567 (Indian grouping)
    "|\\d{1,3}(?:\\.\\d{3}){2,}(?!\\.?\\d)"  # 1.234.567
    "|\\d+)"
    "(?:[.\u066b](?P<frac>\\d+))?"
)
NUMBER = re.compile(SIGN + UNSIGNED)


def number_value(m: re.Match) -> Fraction:
    """The exact value of a `NUMBER` match (separators dropped, any script's digits read)."""
    digits = "".join(str(unicodedata.decimal(c)) for c in m.group("int") if c.isdecimal())
    frac = "".join(str(unicodedata.decimal(c)) for c in (m.group("frac") or ""))
    value = Fraction(int(digits + frac), 10 ** len(frac))
    return -value if m.group("sign") and m.group("sign") not in "+\uff0b" else value


def numbers(text: str) -> list[Fraction]:
    """Every number written in `text`, in order, as exact values (see the forms above)."""
    return [number_value(m) for m in NUMBER.finditer(text)]


def as_int(value: Fraction) -> int | None:
    return value.numerator if value.denominator == 1 else None
