"""The folded solutions of the coded exercises pass their own checkers.

A learner who gives up opens the "Solution" fold and copies it; that code must be right. Every
fold whose Python block defines a function with a checker in vaelib.exercises is run through it.
"""

import json
import math
import re
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Normal

from vaelib import exercises

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
FOLD = re.compile(r"<summary>Solution</summary>(.*?)</details>", re.S)
BLOCK = re.compile(r"```python\n(.*?)```", re.S)


def folded_solutions():
    """(notebook, function name, code) for every folded solution that defines a checked function."""
    found = []
    for path in NOTEBOOKS:
        for cell in json.loads(path.read_text())["cells"]:
            if cell["cell_type"] != "markdown":
                continue
            for fold in FOLD.findall("".join(cell["source"])):
                for code in BLOCK.findall(fold):
                    code = textwrap.dedent(code)
                    for name in re.findall(r"^def (\w+)\(", code, re.M):
                        if hasattr(exercises, f"check_{name}") and name in exercises._EXERCISES:
                            found.append((path.stem, name, code))
    return found


SOLUTIONS = folded_solutions()


def test_the_coded_exercises_have_folded_solutions():
    names = {name for _, name, _ in SOLUTIONS}
    # every one-function checker except the training step (its solution is the loop shown in notebook 06)
    assert names == set(exercises._EXERCISES), set(exercises._EXERCISES) ^ names


@pytest.mark.parametrize("notebook, name, code", SOLUTIONS, ids=[f"{nb}:{name}" for nb, name, _ in SOLUTIONS])
def test_a_folded_solution_passes_its_checker(notebook, name, code, capsys):
    namespace = {"torch": torch, "math": math, "np": np, "F": F, "Normal": Normal}
    # a solution may call the learner's earlier functions (kl_bits calls kl_discrete): give it the references
    namespace.update({other: getattr(exercises, f"reference_{other}") for other in exercises._EXERCISES})
    exec(code, namespace)  # the learner's copy of the fold
    result = getattr(exercises, f"check_{name}")(namespace[name])
    assert result.status == "done", (notebook, name, result.hint, capsys.readouterr().out)
