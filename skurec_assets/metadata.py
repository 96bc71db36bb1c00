"""Helpers that turn core results into Dagster metadata the UI renders."""

from __future__ import annotations

import base64
import html
import time

import dagster as dg
import pandera.pandas as pa


def png_markdown(png: bytes, alt: str) -> str:
    """Markdown embedding a PNG inline, so plots show in the asset's metadata panel without a file server."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode('ascii')})"


def table_schema(schema: pa.DataFrameSchema) -> dg.TableSchema:
    """A pandera schema as a Dagster column schema (shown in the UI's Columns tab)."""
    return dg.TableSchema(
        columns=[
            dg.TableColumn(
                name=name,
                type=str(col.dtype),
                constraints=dg.TableColumnConstraints(nullable=bool(col.nullable), unique=bool(col.unique)),
            )
            for name, col in schema.columns.items()
        ]
    )


def md_cell(value) -> str:
    """A value made safe for one Markdown table cell: catalogue strings (file names, SKU ids) are user input."""
    text = "" if value is None else str(value)
    text = text.replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")
    return html.escape(text, quote=False).replace("`", "\\`").replace("[", "\\[").replace("]", "\\]")


def markdown_table(rows: list[dict], columns: list[str] | None = None) -> str:
    if not rows:
        return "_(empty)_"
    columns = columns or list(rows[0].keys())
    head = "| " + " | ".join(md_cell(c) for c in columns) + " |\n|" + "---|" * len(columns) + "\n"
    return head + "\n".join("| " + " | ".join(md_cell(r.get(c, "")) for c in columns) + " |" for r in rows)


def _throttle(every_s: float):
    """``due(done, total)``: True at most every ``every_s`` seconds, and always at the end."""
    last = [0.0]

    def due(done: int, total: int) -> bool:
        now = time.monotonic()
        if done >= total or now - last[0] >= every_s:
            last[0] = now
            return True
        return False

    return due


def throttled_progress(context, template: str, every_s: float = 5.0):
    """A ``progress(done, total)`` callback logging to Dagster at most every ``every_s`` seconds, and at the end."""
    due = _throttle(every_s)

    def progress(done: int, total: int) -> None:
        if due(done, total):
            context.log.info(template.format(done=done, total=total))

    return progress
