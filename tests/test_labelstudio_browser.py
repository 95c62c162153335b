"""The real UI shows our spans where we put them: headless Debian chromium over CDP."""

from __future__ import annotations

import pytest

from annotate import labelstudio as ls
from annotate.labelstudio.server import _log_tail
from spans import as_span
from tests.labelstudio_fixtures import (  # noqa: F401
    CDPPage, chromium, login_cookies, ls_client, ls_project, ls_server, make_store)

pytestmark = [pytest.mark.labelstudio, pytest.mark.slow]

# Each region's highlight is one or more <span class="htx-highlight htx-highlight-<region id>">:
# join them per region, in document order.
_REGION_TEXTS = """(() => {
  const by = {};
  for (const el of document.querySelectorAll('.htx-highlight')) {
    const id = [...el.classList].find(c => c.startsWith('htx-highlight-'));
    by[id] = (by[id] || '') + el.textContent;
  }
  return Object.values(by);
})()"""


def _evidence(page, tmp_path, name: str, server) -> str:
    """Where the page was, how it got there, what it showed and what the server logged, for a failure
    message (a screenshot in tmp_path)."""
    page.screenshot(tmp_path / f"{name}.png")
    where = page.eval("location.href + ' | highlights ' + document.querySelectorAll('.htx-highlight').length"
                      " + ', editor ' + (document.querySelector('.lsf-main-view, [class*=lsf-editor]') !== null)"
                      " + ' | ' + document.body.innerText.slice(0, 300).replace(/\\s+/g, ' ')")
    return (f"page {where!r}; navigations {page.navigations}; page errors {page.errors}; screenshot {tmp_path / f'{name}.png'}; "
            f"server log tail: {_log_tail(server.log_path, 25)}")


def test_ui_highlights_exactly_the_span_text(tmp_path, chromium, ls_server, ls_client, ls_project):
    store = make_store(tmp_path / "store", n=2)
    ls.push(store, ls_client, ls_project)
    rows = {r["rollout_id"]: r for r in store.read().to_pylist()}
    tasks = {t.data["rollout_id"]: t.id for t in ls_client.tasks.list(project=ls_project, fields="task_only", include="id,data")}
    page = CDPPage(chromium)
    try:
        for domain in ("Page", "Runtime", "Network"):
            page.send(f"{domain}.enable")
        page.set_cookies(ls_server.url, login_cookies(ls_server))
        for rid in ("r0000", "r0001"):  # r0000: emoji with ZWJ, '𝑥', CRLF
            expected = sorted(as_span(s).text for s in rows[rid]["spans"])
            page.eval("window.__stale = true")  # so we never read the previous task's page
            page.goto(f"{ls_server.url}/projects/{ls_project}/data?task={tasks[rid]}")
            try:
                page.wait(f"!window.__stale && document.querySelectorAll('.htx-highlight').length >= {len(expected)}")
                got = page.wait(f"(() => {{ const t = {_REGION_TEXTS}; return t.length === {len(expected)} ? t : null }})()")
            except TimeoutError as e:
                raise AssertionError(f"task {tasks[rid]}: {e}; {_evidence(page, tmp_path, rid, ls_server)}") from None
            assert sorted(got) == expected, f"task {tasks[rid]}: {_evidence(page, tmp_path, rid, ls_server)}"
    finally:
        page.close()
