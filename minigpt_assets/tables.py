"""Plain-text tables for the command line: columns left-aligned, numbers right-aligned (no Dagster, no torch)."""

from __future__ import annotations


def format_table(cols: list[str], rows: list[tuple]) -> str:
    def cell(v: object) -> str:
        if v is None:
            return ""
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    body = [[cell(v) for v in r] for r in rows]
    widths = [max([len(c)] + [len(r[i]) for r in body]) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.rjust(w) if _numeric(v) else v.ljust(w) for v, w in zip(r, widths)) for r in body]
    return "\n".join(lines)


def _numeric(v: str) -> bool:
    try:
        float(v)
        return True
    except ValueError:
        return False
