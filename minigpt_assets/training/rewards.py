"""Rule-based rewards for online RL (grpo): functions of (completion text, reference answer) -> float.

Add a rule by adding it to REWARDS and to `GRPOConfig.reward`."""

from __future__ import annotations

import re
from typing import Callable

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def number_match(completion: str, answer: str) -> float:
    """1.0 when the last number in the completion equals the answer numerically, else 0.0 (so "34 + 22 = 56."
    scores for answer "56", and so does "56"; "56 or 57" does not)."""
    found = _NUMBER.findall(completion)
    if not found:
        return 0.0
    try:
        return float(abs(float(found[-1]) - float(answer)) < 1e-9)
    except ValueError:
        return 0.0


REWARDS: dict[str, Callable[[str, str], float]] = {"number_match": number_match}
