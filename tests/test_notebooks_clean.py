"""Notebooks are committed without outputs or execution counts (clean diffs, no stale numbers)."""

import json
from pathlib import Path

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"


def dirty_cells(notebook: dict) -> list[int]:
    """Indices of code cells that carry outputs or an execution count."""
    return [
        i
        for i, cell in enumerate(notebook.get("cells", []))
        if cell.get("cell_type") == "code" and (cell.get("outputs") or cell.get("execution_count") is not None)
    ]


def test_the_checker_finds_outputs_and_counts():
    clean = {"cells": [{"cell_type": "code", "outputs": [], "execution_count": None}, {"cell_type": "markdown"}]}
    with_output = {"cells": [{"cell_type": "code", "outputs": [{"output_type": "stream"}], "execution_count": None}]}
    with_count = {"cells": [{"cell_type": "markdown"}, {"cell_type": "code", "outputs": [], "execution_count": 3}]}
    assert dirty_cells(clean) == []
    assert dirty_cells(with_output) == [0]
    assert dirty_cells(with_count) == [1]


def test_every_notebook_is_stored_without_outputs():
    dirty = {}
    for path in sorted(NOTEBOOK_DIR.glob("*.ipynb")):
        cells = dirty_cells(json.loads(path.read_text()))
        if cells:
            dirty[path.name] = cells
    assert not dirty, f"code cells with outputs or execution counts (clear them before committing): {dirty}"
