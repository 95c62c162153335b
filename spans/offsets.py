"""Offset helpers shared with the Label Studio bridge (DESIGN §6).

Label Studio stores exact code-point ``start``/``end``, but for a span that crosses a line break
its saved ``text`` has every ``\\r`` and ``\\n`` replaced by the two characters backslash + ``n``
(``'129.\\r\\n👩‍💻'`` is saved as ``'129.\\\\n\\\\n👩‍💻'``). Offsets are authoritative: compare
after applying the same replacement and rebuild the text from the offsets.
"""

from __future__ import annotations


def ls_text(response: str, start: int, end: int) -> str:
    """``response[start:end]`` the way Label Studio saves it: each ``\\r``/``\\n`` as backslash + n."""
    return response[start:end].replace("\r", "\\n").replace("\n", "\\n")


def ls_text_matches(response: str, start: int, end: int, text: str) -> bool:
    """Does Label Studio's saved ``text`` agree with ``response[start:end]``?

    True for the plain slice and for Label Studio's line-break rewriting of it; False for a real
    mismatch or offsets outside the response (code points, end exclusive).
    """
    if not 0 <= start < end <= len(response):
        return False
    piece = response[start:end]
    return text == piece or text == ls_text(response, start, end)
