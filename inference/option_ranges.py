"""Range checks of numeric options, with the option named: one wording for every command."""

from __future__ import annotations


def out_of_range(rules: dict[str, tuple]) -> str | None:
    """The first ``name: (value, low, strict)`` whose value is not above ``low``
    (``strict``) or at least ``low``, as a message naming it; None when all are fine.

    None values are skipped (an option left at its automatic default). NaN fails every
    comparison, so it is refused too.
    """
    for name, (value, low, strict) in rules.items():
        if value is not None and not (value > low if strict else value >= low):
            return f"{name} must be {'>' if strict else '>='} {low:g}, got {value}"
    return None
