"""Keep user-chosen text in our CSV files from running as spreadsheet formulas (CWE-1236).

File names, URLs and the error messages that quote them end up in CSV cells. Excel and
LibreOffice evaluate a cell that starts with ``=``, ``+``, ``-`` or ``@`` as a formula
(``=HYPERLINK(...)``, ``=cmd|...``), some after dropping a leading tab or carriage
return, so a photo named ``=HYPERLINK("http://x")+1.jpg`` would act when someone opens
the results. OWASP's remedy is a leading ``'``: spreadsheets then take the cell as text,
and other CSV readers see one extra character, only in such rare cells.

Only text cells go through this: a score is written as a number and must stay one, even
a negative one. JSON, JSONL, tables and Parquet are not read by spreadsheets and are
left exact.
"""

from __future__ import annotations

# The leading characters that make a spreadsheet treat a cell as a formula. The web page's
# CSV download (server/static/app.js, csvCell) uses the same set; a test keeps them equal.
FORMULA_TRIGGERS = frozenset("=+-@\t\r")


def spreadsheet_safe(text: str) -> str:
    """``text`` with a ``'`` in front when a spreadsheet would read it as a formula."""
    if text and text[0] in FORMULA_TRIGGERS:
        return "'" + text
    return text
