"""The deterministic annotator of the toy arithmetic world (DESIGN §8): free, exact, the default.

A toy response is one step per line, ``17 + 25 = 42``, then ``Answer: 126``. Each step is parsed
with a regex and recomputed; the reference solution (same format, or just the answer) says what
each step's result should be.

- incorrect rollout -> one ``error`` span on the FIRST wrong line, with an `error_type`:
  ``arithmetic`` (a = b op c is false), ``wrong_operation`` (true arithmetic, but not the
  reference's step), ``logic`` (the Answer line does not repeat the last result, or an extra step),
  ``incomplete`` (no Answer line, or it stops before the reference's last step), ``other``;
- correct rollout -> ``key`` spans on the steps that carry the answer: the last step whose result
  equals the answer, and the ``Answer:`` line.
Spans cover a whole line without its surrounding whitespace (code points of `response`).
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


def annotate_lines(lines: list[str], reference: str | None, want_error: bool) -> tuple[list[int], str | None]:
    """Indices of the lines to mark and, for an error, its type. Pure; used by the scripted oracle too."""
    ref_steps = _steps_of(reference or "")
    ref_answer = _answer_of(reference or "")
    results: list[tuple[int, int]] = []  # (line index, stated result) of arithmetic steps
    answer_line: tuple[int, int] | None = None
    first_error: tuple[int, str] | None = None
    for i, line in enumerate(lines):
        m = STEP.search(line)
        if m:
            a, op, b, c = int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4))
            j = len(results)
            results.append((i, c))
            if first_error is None:
                if _compute(a, op, b) != c:
                    first_error = (i, "arithmetic")
                elif ref_steps and j < len(ref_steps) and c != ref_steps[j]:
                    first_error = (i, "wrong_operation")
                elif ref_steps and j >= len(ref_steps):
                    first_error = (i, "logic")
            continue
        a = ANSWER.search(line)
        if a and answer_line is None:
            answer_line = (i, int(a.group(1)))
    if not want_error:
        picks = []
        if answer_line is not None:
            carrying = [i for i, c in results if c == answer_line[1]]
            if carrying:
                picks.append(carrying[-1])
            picks.append(answer_line[0])
        elif results:
            picks.append(results[-1][0])
        return picks, None
    if first_error is not None:
        return [first_error[0]], first_error[1]
    if answer_line is None:
        return ([len(lines) - 1] if lines else []), "incomplete"
    i, value = answer_line
    if results and value != results[-1][1]:
        return [i], "logic"
    if ref_steps and len(results) < len(ref_steps):
        return [i], "incomplete"
    if ref_answer is not None and value != ref_answer:
        return [i], "other"
    return [i], "other"


def line_ranges(text: str) -> list[tuple[int, int]]:
    """(start, end) of each non-blank line of `text`, without surrounding whitespace."""
    out = []
    for m in _LINE.finditer(text):
        a, b = m.start(), m.end()
        while a < b and text[a].isspace():
            a += 1
        while b > a and text[b - 1].isspace():
            b -= 1
        if a < b:
            out.append((a, b))
    return out


def rule_annotate(response: str, reference: str | None, correct: bool) -> tuple[list[Span], str | None]:
    """(spans, error_type) of one toy rollout; error_type is None for a correct rollout."""
    ranges = line_ranges(response)
    picks, error_type = annotate_lines([response[a:b] for a, b in ranges], reference, want_error=not correct)
    label = "key" if correct else "error"
    spans = [Span(ranges[i][0], ranges[i][1], label, "rule", ANNOTATOR, response[ranges[i][0]:ranges[i][1]])
             for i in sorted(set(picks))]
    return spans, error_type
