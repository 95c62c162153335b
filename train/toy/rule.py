"""The deterministic annotator of the toy arithmetic world (DESIGN §8): free, exact, the default.

A toy response is one step per line, ``17 + 25 = 42``, then ``Answer: 126``. Each step is parsed
with a regex and recomputed; the reference solution (same format, or just the answer) says what
each step's result should be.

- incorrect rollout -> one ``error`` span in the FIRST wrong line, with an `error_type`:
  ``arithmetic`` (a = b op c is false), ``wrong_operation`` (true arithmetic, but not the
  reference's step), ``logic`` (the Answer line does not repeat the last result, or an extra step),
  ``incomplete`` (no Answer line, or it stops before the reference's last step), ``other``;
- correct rollout -> ``key`` spans on the steps that carry the answer: the result of the last step
  whose result equals the answer, and the number on the ``Answer:`` line.
Spans are the wrong or decisive part of a step, not the whole line (see `annotate_lines`), in code
points of `response`.
"""

from __future__ import annotations

import re

from spans.model import Span

ANNOTATOR = "rule-toy-v1"
STEP = re.compile(r"(-?\d+)\s*([-+*/×x÷])\s*(-?\d+)\s*=\s*(-?\d+)")
ANSWER = re.compile(r"answer\s*[:=]?\s*\$?(-?\d+)", re.IGNORECASE)
_LINE = re.compile(r"[^\n]+")


def _compute(a: int, op: str, b: int) -> int | None:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op in "*×x":
        return a * b
    if b == 0 or a % b:
        return None  # toy problems divide exactly; anything else is wrong
    return a // b


def _steps_of(text: str) -> list[int]:
    return [int(m.group(4)) for m in STEP.finditer(text)]


def _answer_of(text: str) -> int | None:
    m = ANSWER.search(text)
    if m:
        return int(m.group(1))
    nums = re.findall(r"-?\d+", text)
    return int(nums[-1]) if nums else None


Pick = tuple[int, int, int]  # (line index, start, end) - the marked part of that line


def annotate_lines(lines: list[str], reference: str | None, want_error: bool) -> tuple[list[Pick], str | None]:
    """The parts of lines to mark and, for an error, its type. Pure; the scripted oracle uses it too.

    Marks are tight so they survive TRACE's 25% cap on three-line toy responses: an arithmetic slip
    marks the wrong result, a wrong operation marks the operator and its operand, an Answer-line
    error marks the answer; key spans mark the final step's result and the answer.
    """
    ref_steps = _steps_of(reference or "")
    results: list[tuple[int, int, re.Match]] = []  # (line index, stated result, match) of steps
    answer: tuple[int, int, re.Match] | None = None
    first_error: tuple[Pick, str] | None = None
    for i, line in enumerate(lines):
        m = STEP.search(line)
        if m:
            a, op, b, c = int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4))
            j = len(results)
            results.append((i, c, m))
            if first_error is None:
                if _compute(a, op, b) != c:
                    first_error = ((i, m.start(4), m.end(4)), "arithmetic")
                elif ref_steps and j < len(ref_steps) and c != ref_steps[j]:
                    first_error = ((i, m.start(2), m.end(3)), "wrong_operation")
                elif ref_steps and j >= len(ref_steps):
                    first_error = ((i, m.start(), m.end()), "logic")
            continue
        am = ANSWER.search(line)
        if am and answer is None:
            answer = (i, int(am.group(1)), am)
    if not want_error:
        picks: list[Pick] = []
        if answer is not None:
            carrying = [(i, m) for i, c, m in results if c == answer[1]]
            if carrying:
                i, m = carrying[-1]
                picks.append((i, m.start(4), m.end(4)))
            picks.append((answer[0], answer[2].start(1), answer[2].end(1)))
        elif results:
            i, _, m = results[-1]
            picks.append((i, m.start(4), m.end(4)))
        return picks, None
    if first_error is not None:
        return [first_error[0]], first_error[1]
    if answer is None:  # stopped without stating an answer: mark where it stopped
        if results:
            i, _, m = results[-1]
            return [(i, m.start(4), m.end(4))], "incomplete"
        return ([(len(lines) - 1, 0, len(lines[-1]))] if lines else []), "incomplete"
    i, value, am = answer
    pick = (i, am.start(1), am.end(1))
    if results and value != results[-1][1]:
        return [pick], "logic"
    if ref_steps and len(results) < len(ref_steps):
        return [pick], "incomplete"
    return [pick], "other"


def line_ranges(text: str) -> list[tuple[int, int]]:
    """(start, end) of each non-blank line of `text`, without surrounding whitespace."""
    from spans.offsets import strip_range

    out = []
    for m in _LINE.finditer(text):
        a, b = strip_range(text, m.start(), m.end())
        if a < b:
            out.append((a, b))
    return out


def rule_annotate(response: str, reference: str | None, correct: bool) -> tuple[list[Span], str | None]:
    """(spans, error_type) of one toy rollout; error_type is None for a correct rollout."""
    ranges = line_ranges(response)
    picks, error_type = annotate_lines([response[a:b] for a, b in ranges], reference, want_error=not correct)
    label = "key" if correct else "error"
    spans = []
    for i, a, b in sorted(set(picks)):
        start, end = ranges[i][0] + a, ranges[i][0] + b
        spans.append(Span(start, end, label, "rule", ANNOTATOR, response[start:end]))
    return spans, error_type


class RuleAnnotator:
    """`annotate rule`: `rule_annotate` behind the `Annotator` protocol. Free and exact on toy
    arithmetic rollouts; rows with no verifier result are skipped."""

    def __init__(self) -> None:
        from annotate.protocol import Provenance

        self.provenance = Provenance(source="rule", annotator=ANNOTATOR, model=None, prompt_hash=None,
                                     extra={"rule": "first wrong step / steps carrying the answer"})

    def annotate(self, records: list[dict]) -> list:
        from annotate.protocol import RowResult

        out = []
        for r in records:
            if r.get("correct") is None:
                out.append(RowResult(r["rollout_id"], [], None, "skipped", "no verifier result (`correct` is null)"))
                continue
            spans, etype = rule_annotate(r["response"], r.get("reference"), bool(r["correct"]))
            out.append(RowResult(r["rollout_id"], spans, etype, "ok" if spans else "failed",
                                 None if spans else "no step or answer line found"))
        return out
