"""Token prices (USD per million tokens) and the cost of one call.

A small table of list prices; `--price-in/--price-out` override it, and an unknown model costs 0
with a warning from the CLI (self-hosted endpoints are free per token).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Price:
    """USD per 1M prompt tokens and per 1M completion tokens."""

    input_per_m: float = 0.0
    output_per_m: float = 0.0

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.input_per_m + completion_tokens * self.output_per_m) / 1e6


# Longest prefix wins. List prices at the time of writing; override with flags when they change.
PRICES: dict[str, Price] = {
    "gpt-4o-mini": Price(0.15, 0.60),
    "gpt-4o": Price(2.50, 10.00),
    "gpt-4.1-nano": Price(0.10, 0.40),
    "gpt-4.1-mini": Price(0.40, 1.60),
    "gpt-4.1": Price(2.00, 8.00),
    "gpt-5-nano": Price(0.05, 0.40),
    "gpt-5-mini": Price(0.25, 2.00),
    "gpt-5": Price(1.25, 10.00),
    "o4-mini": Price(1.10, 4.40),
}


def price_for(model: str, input_per_m: float | None = None, output_per_m: float | None = None) -> tuple[Price, bool]:
    """(price, known): flags win, else the longest table prefix of `model`, else free + unknown."""
    base, known = Price(), False
    for prefix in sorted(PRICES, key=len, reverse=True):
        if model.split("/")[-1].startswith(prefix):
            base, known = PRICES[prefix], True
            break
    if input_per_m is not None or output_per_m is not None:
        known = True
        base = Price(
            base.input_per_m if input_per_m is None else input_per_m,
            base.output_per_m if output_per_m is None else output_per_m,
        )
    return base, known
