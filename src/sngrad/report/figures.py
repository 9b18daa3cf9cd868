"""Every figure of the manifest (:data:`sngrad.layout.FIGURES`), as the templates show it."""

from __future__ import annotations

import os
from pathlib import Path

from sngrad.layout import FIGURES, Layout


def figures(layout: Layout, out: Path) -> dict:
    """{name: {path, caption, notebook, exists, markdown}} for every figure of the manifest."""
    figures = {}
    for name, figure in FIGURES.items():
        path = Path(layout.figure(name))
        rel = os.path.relpath(path, out.parent).replace(os.sep, "/")
        made_by = f"`analysis/{figure.notebook}.py`"
        if path.exists():
            markdown = (
                f"![{figure.caption}]({rel})\n\n*{figure.caption}. Figure made by {made_by}.*"
            )
        else:
            markdown = f"*(Figure `{name}` was not produced: {made_by} has not run.)*"
        figures[name] = {
            "path": rel,
            "caption": figure.caption,
            "notebook": figure.notebook,
            "exists": path.exists(),
            "markdown": markdown,
        }
    return figures
