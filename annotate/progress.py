"""The one progress bar of an annotation run: the engine's requests and the Ray executor's rows."""

from __future__ import annotations


class RunBar:
    """``label | bar | done/total | rate | counters… | time left`` on stderr (stdout keeps the
    command's result line). `fields` are the counters shown after the rate: name -> (rich style,
    starting text). Disabled (``enabled=False``), every method does nothing. A context manager."""

    def __init__(self, label: str, total: int | None, fields: dict[str, tuple[str, str]], enabled: bool = True):
        self._bar = None
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        counters = [TextColumn(f"[{style}]{{task.fields[{name}]}}" if style else f"{{task.fields[{name}]}}")
                    for name, (style, _) in fields.items()]
        self._bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                             TextColumn("[cyan]{task.fields[rate]}"), *counters, TimeRemainingColumn(),
                             refresh_per_second=4, console=Console(stderr=True))
        self._task = self._bar.add_task(label, total=total, rate="", **{n: text for n, (_, text) in fields.items()})

    def start(self) -> RunBar:
        if self._bar is not None:
            self._bar.start()
        return self

    def update(self, advance: int | None = None, **fields) -> None:
        """Advance by `advance` and set fields (``rate``, the counters, or ``total``)."""
        if self._bar is not None:
            self._bar.update(self._task, advance=advance, **fields)

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()

    def __enter__(self) -> RunBar:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
