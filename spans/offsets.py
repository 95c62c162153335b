"""Code-point offsets: trimming a range to its non-space text, and Label Studio's region ``text``
against our offsets (DESIGN §6).

Label Studio stores exact code-point ``start``/``end``, but the ``text`` it saves for a region drawn
in its UI is the browser's *rendered* text of that range (measured on 1.23.2 in headless Chromium):

- each ``\\r`` and ``\\n`` is saved as the two characters backslash + ``n``
  (``'129.\\r\\n👩‍💻'`` is saved as ``'129.\\\\n\\\\n👩‍💻'``);
- collapsible white space (space, tab, line breaks: CSS ``white-space: pre-line``) is collapsed: a
  tab or a run of spaces becomes one space, spaces and tabs next to a line break vanish, and white
  space at the region's edges may vanish (it depends on text outside the region);
- everything else is kept as it is: a no-break space, a combining accent in decomposed form.

Offsets are authoritative: the text is only checked, with :func:`ls_text_matches`, and the stored
text is rebuilt from the offsets.
"""

from __future__ import annotations

import re
import unicodedata

_COLLAPSIBLE = " \t\r\n"  # CSS collapsible white space; NBSP, em space, etc. are rendered as they are
_RUNS = re.compile(r"[ \t\r\n]+|[^ \t\r\n]+")
_BREAK = r"(?:\\n|\r|\n)"  # a line break as LS saves it (backslash + n) or raw (API-made results)
_SPACES = r"[ \t]*"


def strip_range(text: str, a: int, b: int) -> tuple[int, int]:
    """``[a, b)`` shrunk so ``text[a:b]`` neither starts nor ends with white space (``str.isspace``);
    ``a == b`` when the range holds only white space. Code-point offsets."""
    while a < b and text[a].isspace():
        a += 1
    while b > a and text[b - 1].isspace():
        b -= 1
    return a, b


def ls_text(response: str, start: int, end: int) -> str:
    """``response[start:end]`` with each ``\\r``/``\\n`` as backslash + n (LS's line-break escape)."""
    return response[start:end].replace("\r", "\\n").replace("\n", "\\n")


def _run_pattern(run: str, edge: bool) -> str:
    """The regex of what Label Studio may save for one run of ``response`` (see the module doc)."""
    if run[0] not in _COLLAPSIBLE:
        return re.escape(run)
    breaks = run.count("\r") + run.count("\n")
    if breaks == 0:  # inside: one space (or the run as is); at an edge it may vanish
        return f"(?:{re.escape(run)}| )" + ("?" if edge else "")
    count = f"{{0,{breaks}}}" if edge else f"{{{breaks}}}"
    return f"{_SPACES}(?:{_BREAK}{_SPACES}){count}"


def ls_text_pattern(piece: str) -> re.Pattern:
    """A regex matching every rendering Label Studio may save for the region text ``piece``."""
    runs = _RUNS.findall(piece)
    parts = [_run_pattern(r, edge=i in (0, len(runs) - 1)) for i, r in enumerate(runs)]
    return re.compile("".join(parts), re.DOTALL)


def ls_text_matches(response: str, start: int, end: int, text: str) -> bool:
    """Does Label Studio's saved ``text`` agree with ``response[start:end]`` (code points, end exclusive)?

    True for the exact slice and for Label Studio's rendering of it: white space collapsed or
    dropped, line breaks as backslash + ``n`` (module doc); a text in another canonical
    normalization form (NFC vs NFD) also agrees. False for any other difference in a non-white-space
    character (a no-break space is not white space here: LS keeps it), for a changed number of line
    breaks inside the region, and for offsets that are not ints or fall outside the response.
    """
    if type(start) is not int or type(end) is not int or not 0 <= start < end <= len(response):
        return False
    if not isinstance(text, str):
        return False
    piece = response[start:end]
    if text == piece:
        return True
    piece, text = unicodedata.normalize("NFC", piece), unicodedata.normalize("NFC", text)
    return ls_text_pattern(piece).fullmatch(text) is not None
