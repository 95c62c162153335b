"""spans.locate across Unicode normalization forms and scripts (issue #14, kind 6).

Each case is ``prefix + quote + suffix``, cut at grapheme-cluster boundaries. The text handed to
`locate` is the whole string in one normalization form, the quote is in another (all 4 x 4 pairs of
NFC/NFD/NFKC/NFKD), and the right answer is where the quote's clusters sit in that text, in its
own code points.
"""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from spans import locate, locate_detail, normalize_with_map
from spans.locate import cluster_bounds

FORMS = ("NFC", "NFD", "NFKC", "NFKD")
N = unicodedata.normalize

# (name, prefix, quote, suffix): the quote is written in one form here; each test re-normalises it.
CASES = [
    ("latin accent", "Le ", "café au lait", " coûte 2 €."),
    ("vietnamese stacked marks", "Tiếng ", "Việt có dấu", " chồng."),
    ("hangul syllables/jamo", "답은 ", "안녕하세요 세계", " 입니다."),
    ("devanagari nukta + conjunct", "यह ", "क़िला क्षत्रिय", " है।"),
    ("bengali two-part vowel", "এটা ", "কোন বৌ", " ঠিক।"),
    ("tamil two-part vowel", "இது ", "கொடு கோல்", " சரி."),
    ("arabic harakat + lam-alef form", "قال ", "إِنَّ ﻻ شك", " هنا."),
    ("thai sara am + tone marks", "คำตอบ ", "น้ำ ที่ถูก", " แล้ว"),
    ("cjk compatibility ideographs", "答 ", "豈 更 ㍿", " 終"),
    ("fullwidth forms", "Ｘ ", "ＡＢＣ１２３＋４", " ！"),
    ("ligatures", "the ", "ﬁnal ﬀ ﬃx", " ok"),
    ("fractions, circled, superscripts", "so ", "½ ① x²", " = y"),
    ("emoji zwj, skin tone, flag, VS16", "I ", "❤️ 👩🏽‍💻 🇫🇷", " code"),
    ("mixed scripts", "Σ ", "ﬁ한क़ে়Å", " end"),
]


def _expected(form: str, prefix: str, quote: str, suffix: str) -> tuple[str, tuple[int, int]]:
    text = N(form, prefix + quote + suffix)
    # normalization must not reach across the cuts (it does not, at grapheme cluster boundaries)
    assert text == N(form, prefix) + N(form, quote) + N(form, suffix)
    a = len(N(form, prefix))
    return text, (a, a + len(N(form, quote)))


@pytest.mark.parametrize("name,prefix,quote,suffix", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("text_form", FORMS)
@pytest.mark.parametrize("quote_form", FORMS)
def test_quote_in_any_form_found_in_text_in_any_form(name, prefix, quote, suffix, text_form, quote_form):
    text, want = _expected(text_form, prefix, quote, suffix)
    d = locate_detail(text, N(quote_form, quote))
    assert d.span == want, (name, text_form, quote_form, d)
    assert d.method in ("exact", "normalized")


@pytest.mark.parametrize("text,quote,near,want", [
    # One original character standing for several normalised ones is returned whole.
    ("the ﬁnal answer", "final", None, "ﬁnal"),
    ("株式会社 = ㍿.", "㍿", None, "㍿"),
    ("company ㍿ ltd", "株式会社", None, "㍿"),
    # halfwidth ﾊﾟﾝ (ﾊﾟ is one cluster) is パン under NFKC too: two copies, so `near` decides
    ("ﾊﾟﾝ and パン", N("NFD", "パン"), None, None),
    ("ﾊﾟﾝ and パン", N("NFD", "パン"), 0, "ﾊﾟﾝ"),
    ("ﾊﾟﾝ and パン", N("NFD", "パン"), 9, "パン"),
    ("ﾊﾟﾝ and パン", "ﾊﾟﾝ", None, (0, 3)),  # exact wins before normalisation
    # a normalised hit never ends inside a cluster: widened to the whole cluster
    ("x \u2764\ufe0f y", "\u2764\ufe0e", None, "\u2764\ufe0f"),  # text-style quote, emoji-style text
    (N("NFD", "NFD 한 here"), "한", None, N("NFD", "한")),
    # what is not the same text stays unfound
    ("가나다", "각", None, None),
    ("ﬁx", "fx", None, None),
    ("e\u0301", "e", None, "e"),  # exact substring: the bare letter is literally there
])
def test_mapping_back_to_original_code_points(text, quote, near, want):
    got = locate(text, quote, near=near)
    if want is None or isinstance(want, tuple):
        assert got == want
    else:
        assert got is not None and text[got[0]:got[1]] == want


def test_map_points_each_normalised_char_at_its_cluster():
    text = "a\u0301ﬁ\u1112\u1161\u11ab\r\n  b"  # á (NFD), ﬁ, 한 as three jamo, CRLF, two spaces
    norm, start, end = normalize_with_map(text)
    assert norm == "áfi한 b"
    assert list(zip(start, end)) == [(0, 2), (2, 3), (2, 3), (3, 6), (6, 10), (10, 11)]
    assert cluster_bounds(text) == [0, 2, 3, 6, 8, 9, 10, 11]


# Whole clusters in several scripts and forms; none merges with a neighbour.
UNITS = [
    "a", "b", "é", "e\u0301", "ﬁ", "ﬀ", "Ａ", "１", "½", "①", "²", "한", "ᄒ\u1161\u11ab", "각", "가",
    "क़", "क\u093c", "क्ष", "ि", "কো", "ক\u09c7\u09be", "கொ", "إِ", "ﻻ", "ب", "น้ำ", "ก", "豈", "更",
    "㍿", "株", "👩🏽‍💻", "❤️", "❤", "🇫🇷", "Å", "Å", "1", "-", "—", "x",
]
UNITS = [u for u in UNITS if cluster_bounds(u) == [0, len(u)]]  # each a single grapheme cluster


@st.composite
def pieces(draw):
    unit = st.sampled_from(UNITS)
    word = st.lists(unit, min_size=1, max_size=4)
    words = lambda lo: st.lists(word, min_size=lo, max_size=4)  # noqa: E731
    pre, mid, post = draw(words(0)), draw(words(1)), draw(words(0))
    join = lambda ws: [u for w in ws for u in (*w, " ")]  # noqa: E731
    quote = join(mid)[:-1]
    return join(pre), quote, [" ", *join(post)] if post else []


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pieces(), st.sampled_from(FORMS), st.sampled_from(FORMS))
def test_any_form_any_script_returns_original_offsets(parts, text_form, quote_form):
    pre, quote, post = ("".join(p) for p in parts)
    text = N(text_form, pre + quote + post)
    assume(text == N(text_form, pre) + N(text_form, quote) + N(text_form, post))
    a = len(N(text_form, pre))
    want = (a, a + len(N(text_form, quote)))
    assume(want[0] in cluster_bounds(text) and want[1] in cluster_bounds(text))
    q = N(quote_form, quote)
    got = locate(text, q, near=want)
    ntext, nq = normalize_with_map(text)[0], normalize_with_map(q)[0].strip()
    copies = sum(ntext.startswith(nq, i) for i in range(len(ntext)))
    assert copies >= 1  # the normalised quote is always in the normalised text
    if copies == 1:
        assert got == want, (text, q)
    elif got is not None:  # several copies: whatever is chosen is one of them
        assert normalize_with_map(text[got[0]:got[1]])[0] == nq
