"""The README and the other Markdown pages: CI runs the README's commands, and every link resolves.

- ``.ci/run`` must run exactly the install command and the test command that the README's Quick
  start gives, so that what a reader types is what CI checks.
- Every relative link and image in the README, ``docs/*.md``, ``benchmarks/README.md`` and the
  model cards must point at a file that exists, and a ``#fragment`` at a heading of that file.
- The README stays a front door: about a page, with the commands and the screenshot on its first
  screen.

Each checker is also run on a small broken example, so that a checker that could never fail is
caught too.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
CI_SCRIPT = ROOT / ".ci" / "run"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md")), ROOT / "benchmarks" / "README.md",
         ROOT / "vaelib" / "pretrained" / "README.md"]
SCREENSHOT = "figures/07_latent_explorer.png"
FIRST_SCREEN_LINES = 40
README_MAX_WORDS = 1200

# which Quick start block is which: a word that only that command holds
COMMAND_KEYS = {"install": "pip install", "open": "jupyter lab", "test": "pytest"}
# .ci/run announces each of the README's commands with one of these comments, on the line above it
CI_MARKERS = {"install": "# --- the README's install command", "test": "# --- the README's test command"}

FENCE = re.compile(r"^(`{3,}|~{3,})([^\n]*)\n(.*?)^\1[ \t]*$", re.M | re.S)
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_LINK = re.compile(r"^[ ]{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$", re.M)
HTML_LINK = re.compile(r"<(?:img|a)\b[^>]*?\b(?:src|href)=\"([^\"]+)\"", re.I)
HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t#]*$", re.M)


# --- helpers --------------------------------------------------------------------------------------


def fenced_blocks(markdown: str) -> list[tuple[str, str]]:
    """(info string, body) of every fenced code block."""
    return [(m.group(2).strip(), m.group(3)) for m in FENCE.finditer(markdown)]


def without_code(markdown: str) -> str:
    """The Markdown with fenced blocks and inline code spans blanked out (links in code are not links)."""
    text = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), markdown)
    return re.sub(r"(`+)(?:(?!\1).)+?\1", "``", text)


def section(markdown: str, title: str) -> str:
    """The text under the level-2 heading ``title``, up to the next level-2 heading."""
    match = re.search(rf"^## {re.escape(title)}[ \t]*\n(.*?)(?=^## |\Z)", markdown, re.M | re.S)
    assert match, f"no section '## {title}'"
    return match.group(1)


def readme_commands(markdown: str) -> dict[str, str]:
    """The one-line commands of the Quick start, keyed as in COMMAND_KEYS."""
    found: dict[str, list[str]] = {key: [] for key in COMMAND_KEYS}
    for info, body in fenced_blocks(section(markdown, "Quick start")):
        if info not in ("bash", "sh", "shell", "console"):
            continue
        lines = [line.strip() for line in body.splitlines() if line.strip()]
        for key, word in COMMAND_KEYS.items():
            if any(word in line for line in lines):
                assert len(lines) == 1, f"the Quick start's {key} block should hold one command line, not {lines}"
                found[key].append(lines[0])
    for key, commands in found.items():
        assert len(commands) == 1, f"the Quick start should give one {key} command, found {commands}"
    return {key: commands[0] for key, commands in found.items()}


def ci_commands(script: str) -> dict[str, str]:
    """The command on the first non-comment line after each CI_MARKERS comment of ``.ci/run``."""
    lines = script.splitlines()
    commands = {}
    for key, marker in CI_MARKERS.items():
        at = [i for i, line in enumerate(lines) if line.strip() == marker]
        assert len(at) == 1, f".ci/run should have the line {marker!r} once, found it {len(at)} times"
        rest = [line.strip() for line in lines[at[0] + 1 :] if line.strip() and not line.strip().startswith("#")]
        assert rest, f"no command after {marker!r} in .ci/run"
        commands[key] = rest[0]
    return commands


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading keeps its text
    text = text.replace("`", "").replace("*", "")  # code and emphasis marks are not part of the text
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(markdown: str) -> set[str]:
    """Every heading anchor of a Markdown page; repeated headings get -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    result = set()
    for match in HEADING.finditer(without_code(markdown)):
        base = slug(match.group(1))
        n = seen.get(base, 0)
        seen[base] = n + 1
        result.add(base if n == 0 else f"{base}-{n}")
    return result


def link_targets(markdown: str) -> list[str]:
    """Targets of inline links and images, reference definitions and HTML src/href, outside code."""
    text = without_code(markdown)
    return [*INLINE_LINK.findall(text), *REFERENCE_LINK.findall(text), *HTML_LINK.findall(text)]


def broken_links(page: Path) -> list[str]:
    """The relative links and images of ``page`` whose file, or whose #fragment, does not exist."""
    markdown = page.read_text(encoding="utf-8")
    problems = []
    for target in link_targets(markdown):
        if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target) or target.startswith("//"):
            continue  # http:, https:, mailto: ... are not checked here (no network)
        path_part, _, fragment = target.partition("#")
        file = (page.parent / path_part).resolve() if path_part else page
        if not file.exists():
            shown = file.relative_to(ROOT) if file.is_relative_to(ROOT) else file
            problems.append(f"{target} (no file {shown})")
        elif fragment and file.suffix == ".md" and fragment not in anchors(file.read_text(encoding="utf-8")):
            problems.append(f"{target} (no heading '#{fragment}' in {file.name})")
    return problems


# --- the README and .ci/run -----------------------------------------------------------------------


def test_ci_runs_the_readme_install_and_test_commands():
    readme = readme_commands(README.read_text(encoding="utf-8"))
    ci = ci_commands(CI_SCRIPT.read_text(encoding="utf-8"))
    for key in CI_MARKERS:
        assert ci[key] == readme[key], (
            f"the README's {key} command and the one .ci/run runs differ:\n"
            f"  README:  {readme[key]}\n  .ci/run: {ci[key]}"
        )


def test_the_command_checker_notices_a_drift():
    readme = README.read_text(encoding="utf-8")
    script = CI_SCRIPT.read_text(encoding="utf-8")
    test_command = readme_commands(readme)["test"]
    drifted = readme.replace(test_command, test_command + " -x", 1)
    assert readme_commands(drifted)["test"] != ci_commands(script)["test"]
    renamed = script.replace(CI_MARKERS["install"], "# --- install")
    with pytest.raises(AssertionError, match="install command"):
        ci_commands(renamed)


def test_readme_shows_the_commands_and_the_screenshot_on_its_first_screen():
    text = README.read_text(encoding="utf-8")
    first = "\n".join(text.splitlines()[:FIRST_SCREEN_LINES])
    for key, command in readme_commands(text).items():
        assert command in first, f"the {key} command is not in the README's first {FIRST_SCREEN_LINES} lines"
    assert f"]({SCREENSHOT})" in first, f"the screenshot {SCREENSHOT} is not in the first {FIRST_SCREEN_LINES} lines"


def test_readme_is_about_a_page():
    words = len(README.read_text(encoding="utf-8").split())  # what `wc -w` counts
    assert words <= README_MAX_WORDS, (
        f"README.md has {words} words, more than {README_MAX_WORDS}: move details to docs/ or "
        "benchmarks/README.md and link to them"
    )


# --- links ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_image_resolves(page):
    assert page.is_file(), f"{page.relative_to(ROOT)} is missing"
    problems = broken_links(page)
    assert not problems, f"broken links in {page.relative_to(ROOT)}:\n  " + "\n  ".join(problems)


def test_the_link_checker_finds_broken_links_and_skips_code(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "guide.md").write_text("# Guide\n\n## Two words\n", encoding="utf-8")
    (tmp_path / "picture.png").write_bytes(b"")
    page = tmp_path / "README.md"
    page.write_text(
        "# Title\n\n"
        "[fine](docs/guide.md#two-words) ![fine](picture.png) [fine](#title) [web](https://example.org/x)\n"
        "[no file](docs/missing.md) ![no image](figures/none.png) [no heading](docs/guide.md#three-words)\n"
        "[no anchor here](#nowhere) <img src=\"gone.png\">\n\n"
        "[ref]: docs/also-missing.md\n\n"
        "`[in code](not/checked.md)`\n\n```md\n[in a block](not/checked/either.md)\n```\n",
        encoding="utf-8",
    )
    problems = broken_links(page)
    found = sorted(p.split(" ")[0] for p in problems)
    assert found == sorted([
        "docs/missing.md", "figures/none.png", "docs/guide.md#three-words", "#nowhere", "gone.png",
        "docs/also-missing.md",
    ]), problems


@pytest.mark.parametrize(
    "heading, expected",
    [
        ("Quick start", "quick-start"),
        ("train_speed.py", "train_speedpy"),
        ("A good latent-50 model in three epochs", "a-good-latent-50-model-in-three-epochs"),
        ("The data and offline use", "the-data-and-offline-use"),
        ("`vaelib.kl`: entropies", "vaelibkl-entropies"),
    ],
)
def test_heading_anchors_follow_github(heading, expected):
    assert slug(heading) == expected
