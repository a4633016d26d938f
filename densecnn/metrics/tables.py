"""Per-class tables written at test (detection AP, semantic IoU): CSV at full precision and a README-style
markdown table, from rows of plain values where ``None`` means undefined (no ground truth of the class)."""
from __future__ import annotations

import csv
import io
from typing import Sequence

#: ``(row key, header)`` pairs, in column order
Columns = Sequence[tuple[str, str]]


def table_csv(rows: Sequence[dict], columns: Columns) -> str:
    """CSV with the row keys as header; an empty cell where a value is undefined."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([key for key, _ in columns])
    for row in rows:
        writer.writerow(["" if row.get(key) is None else row[key] for key, _ in columns])
    return out.getvalue()


def _cell(value) -> str:
    if value is None:
        return "n/a"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def table_markdown(rows: Sequence[dict], columns: Columns, total: dict | None = None) -> str:
    """A markdown table (4 decimals, "n/a" where undefined), the first column left-aligned, and ``total`` as a
    last row when given (see ``mean_row``)."""
    lines = ["| " + " | ".join(header for _, header in columns) + " |",
             "|" + "|".join(":---" if i == 0 else "---:" for i in range(len(columns))) + "|"]
    for row in [*rows, *([total] if total is not None else [])]:
        lines.append("| " + " | ".join(_cell(row.get(key)) for key, _ in columns) + " |")
    return "\n".join(lines) + "\n"


def mean_row(rows: Sequence[dict], means: dict, summed: Sequence[str]) -> dict:
    """The "mean" row: the metric's own means (not recomputed here) and the totals of the count columns."""
    return {"class": "**mean**", **{key: sum(r[key] for r in rows) for key in summed}, **means}
