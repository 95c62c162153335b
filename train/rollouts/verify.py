"""Verifiers: named pure functions `(response, reference) -> (reward, correct)`.

`VERIFIERS` maps the name stored in the `verifier` column to the function, so a rollout records
exactly which rule judged it and any row can be re-verified later.

- `toy-int`    — the toy world: the first `Answer: N` line of the response equals the reference's
                 `Answer: N` (or the reference itself when it is a bare integer). Exact, free.
- `last-int`   — the last number in the response is an integer equal to the reference; for models that do
                 not follow the toy answer format (e.g. SmolLM2 on word problems).
- `math-verify`— LaTeX / `\\boxed{}` answers, compared symbolically by HF `math-verify`.
- `reasoning-gym` — the final answer extracted and scored by the reasoning-gym task's own
                 `score_answer` (reward in 0..1; see `train.rollouts.reasoning_gym_tasks`).

Rewards are 1.0 for correct and 0.0 otherwise (reasoning-gym: the task's score, 0..1).
"""

from __future__ import annotations

import logging
import re
import threading
import unicodedata
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from fractions import Fraction
from typing import Callable

Verifier = Callable[[str, str], "tuple[float, bool]"]

# Numbers as people and models write them (issue 14, kind 4): any Unicode decimal digits
# (ASCII, fullwidth, Arabic-Indic, Devanagari, ...); a sign that is a hyphen-minus, minus sign U+2212,
# en/figure dash, hyphen, small/fullwidth hyphen-minus or heavy minus, and counts as a sign only where
# no letter or digit touches it on the left ("7-5" is a subtraction, "x−3" is not minus three);
# thousands groups of exactly 3 digits separated consistently by a comma, apostrophe (' or U+2019),
# no-break, thin, narrow no-break or figure space, or the Arabic thousands separator U+066C; Indian
# lakh grouping (12,34,567); dots as group separators only with two or more groups (1.234.567); a
# decimal part after '.' or the Arabic decimal separator U+066B ("12.0" is 12, "3.5" is no integer).
_MINUS = "-\u2212\u2013\u2012\u2010\u2011\ufe63\uff0d\u2796"
_SIGN = f"(?P<sign>(?<![\\w.])[{_MINUS}+\uff0b])?"
_SEP = ",'\u2019\u00a0\u2009\u202f\u2007\u066c"
_UNSIGNED = (
    f"(?P<int>\\d{{1,3}}(?P<sep>[{_SEP}])\\d{{3}}(?:(?P=sep)\\d{{3}})*(?!\\d)"  # 1,234,567  1 234  1'234
    "|\\d{1,2}(?:,\\d{2})+,\\d{3}(?!\\d)"  # 12,34,567 (Indian grouping)
    "|\\d{1,3}(?:\\.\\d{3}){2,}(?!\\.?\\d)"  # 1.234.567
    "|\\d+)"
    "(?:[.\u066b](?P<frac>\\d+))?"
)
_NUMBER = re.compile(_SIGN + _UNSIGNED)
_ANSWER = re.compile(r"Answer\s*[:\uff1a]\s*\**\s*" + _SIGN + _UNSIGNED)


def _value(m: re.Match) -> Fraction:
    """The exact value of a `_NUMBER` match (separators dropped, any script's digits read)."""
    digits = "".join(str(unicodedata.decimal(c)) for c in m.group("int") if c.isdecimal())
    frac = "".join(str(unicodedata.decimal(c)) for c in (m.group("frac") or ""))
    value = Fraction(int(digits + frac), 10 ** len(frac))
    return -value if m.group("sign") and m.group("sign") not in "+\uff0b" else value


def numbers(text: str) -> list[Fraction]:
    """Every number written in `text`, in order, as exact values (see the forms above)."""
    return [_value(m) for m in _NUMBER.finditer(text)]


def _as_int(value: Fraction) -> int | None:
    return value.numerator if value.denominator == 1 else None


def _result(ok: bool) -> tuple[float, bool]:
    return (1.0 if ok else 0.0), ok


def reference_int(reference: str) -> int:
    """The integer a reference stands for: its `Answer: N` line, else the whole string as one
    integer (any of the written forms above). Raises ValueError naming the reference when there is
    none (bad data, not a miss)."""
    m = _ANSWER.search(reference) or _NUMBER.fullmatch(reference.strip())
    value = _as_int(_value(m)) if m else None
    if value is None:
        raise ValueError(f"reference {reference[:80]!r} has no 'Answer: N' line and is not an integer")
    return value


def toy_int(response: str, reference: str) -> tuple[float, bool]:
    """Exact integer match of the first `Answer: N` in the response (a response that states
    several answers gets its first one judged, so listing guesses never pays)."""
    m = _ANSWER.search(response)
    return _result(m is not None and _as_int(_value(m)) == reference_int(reference))


def last_int(response: str, reference: str) -> tuple[float, bool]:
    """The last number in the response is an integer equal to the reference integer."""
    found = numbers(response)
    return _result(bool(found) and _as_int(found[-1]) == reference_int(reference))


# math-verify: its own timeouts use SIGALRM, which only works on the main thread. Off the main
# thread we pass None (as its docs require) and bound the wall time ourselves with a worker thread;
# a check that overruns is judged incorrect (its thread is abandoned, a rare pathological input).
MATH_VERIFY_TIMEOUT_S = 5.0
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _math_verify_check(response: str, reference: str, signal_timeout: int | None) -> bool:
    from math_verify import parse, verify

    logging.getLogger("math_verify").setLevel(logging.ERROR)  # it warns on every timeout=None call
    gold = parse(reference, parsing_timeout=signal_timeout)
    if not gold:
        raise ValueError(f"math-verify could not parse the reference {reference[:80]!r}")
    pred = parse(response, parsing_timeout=signal_timeout)
    return bool(pred) and bool(verify(gold, pred, timeout_seconds=signal_timeout))


def math_verify(response: str, reference: str, timeout_s: float = MATH_VERIFY_TIMEOUT_S) -> tuple[float, bool]:
    """Symbolic equivalence of the response's final answer (`$…$` or `\\boxed{}`) and the
    reference's, with at most `timeout_s` seconds of checking (an overrun counts as incorrect)."""
    global _pool
    if threading.current_thread() is threading.main_thread():
        return _result(_math_verify_check(response, reference, max(1, int(timeout_s))))
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="math-verify")
    future = _pool.submit(_math_verify_check, response, reference, None)
    try:
        return _result(future.result(timeout=timeout_s))
    except FutureTimeout:
        return _result(False)


VERIFIERS: dict[str, Verifier] = {
    "toy-int": toy_int,
    "last-int": last_int,
    "math-verify": math_verify,
}


def _reasoning_gym(response: str, reference: str) -> tuple[float, bool]:
    from train.rollouts.reasoning_gym_tasks import reasoning_gym_verify  # optional extra, imported on use

    return reasoning_gym_verify(response, reference)


VERIFIERS["reasoning-gym"] = _reasoning_gym


def get_verifier(name: str) -> Verifier:
    """The verifier registered under `name`; a clear error listing the known names otherwise."""
    try:
        return VERIFIERS[name]
    except KeyError:
        raise ValueError(f"unknown verifier {name!r}; known: {', '.join(sorted(VERIFIERS))}") from None
