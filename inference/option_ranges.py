"""Range checks of numeric options, with the option named: one wording for every command."""

from __future__ import annotations


def out_of_range(rules: dict[str, tuple]) -> str | None:
    """The first ``name: (value, low, strict)`` whose value is not above ``low``
    (``strict``) or at least ``low``, as a message naming it; None when all are fine.

    None values are skipped (an option left at its automatic default). NaN fails every
    comparison, so it is refused too, and so is infinity: no option means "unlimited" by
    it, and the integer options would fail to convert it later, with a traceback.
    """
    for name, (value, low, strict) in rules.items():
        if value is None:
            continue
        if not (value > low if strict else value >= low):
            return f"{name} must be {'>' if strict else '>='} {low:g}, got {value}"
        if value == float("inf"):
            return f"{name} must be a finite number, got {value}"
    return None
