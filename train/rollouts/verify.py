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
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Callable

from train.rollouts.numbers import NUMBER, SIGN, UNSIGNED, as_int, number_value, numbers

Verifier = Callable[[str, str], "tuple[float, bool]"]

_ANSWER = re.compile(r"Answer\s*[:\uff1a]\s*\**\s*" + SIGN + UNSIGNED)


def _result(ok: bool) -> tuple[float, bool]:
    return (1.0 if ok else 0.0), ok


def reference_int(reference: str) -> int:
    """The integer a reference stands for: its `Answer: N` line, else the whole string as one
    integer (any of the written forms above). Raises ValueError naming the reference when there is
    none (bad data, not a miss)."""
    m = _ANSWER.search(reference) or NUMBER.fullmatch(reference.strip())
    value = as_int(number_value(m)) if m else None
    if value is None:
        raise ValueError(f"reference {reference[:80]!r} has no 'Answer: N' line and is not an integer")
    return value


def toy_int(response: str, reference: str) -> tuple[float, bool]:
    """Exact integer match of the first `Answer: N` in the response (a response that states
    several answers gets its first one judged, so listing guesses never pays)."""
    m = _ANSWER.search(response)
    return _result(m is not None and as_int(number_value(m)) == reference_int(reference))


def last_int(response: str, reference: str) -> tuple[float, bool]:
    """The last number in the response is an integer equal to the reference integer."""
    found = numbers(response)
    return _result(bool(found) and as_int(found[-1]) == reference_int(reference))


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
