"""Docs that cannot rot: every code block marked runnable in README.md and docs/*.md runs, on tiny generated data.

The convention (docs/development.md, "Runnable snippets"): an HTML comment on the line before a fence,
    <!-- runnable -->                 run the block: bash = tlkit commands, python = executed as is
    <!-- runnable: file=NAME -->      write the block to NAME (e.g. the recipe the following commands use)
Blocks of one page run in order in one temporary folder holding `my_images/` (3 colour classes, train/ + val/, 36 px)
and a copy of `recipes/`. Backbones are swapped for timm's tiny random `test_resnet` at 32 px with no weights, so a
snippet may name tf_efficientnet_lite0 at 224 px exactly as a user would write it. Shell blocks may contain only
`tlkit ...` and `python scripts/....py` commands; they run in this process (no interpreter start-up per command) and
must exit 0. A block naming an API that is still being built (PENDING) runs on its own, fresh, as an xfail.
"""

from __future__ import annotations

import glob
import re
import runpy
import shlex
import shutil
import sys
from pathlib import Path

import pytest
from conftest import write_colour_classes

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
BLOCK = re.compile(
    r"^<!--\s*runnable(?::\s*(?P<opts>[^>]*?))?\s*-->\s*\n```(?P<lang>\w*)[^\n]*\n(?P<body>.*?)^```", re.DOTALL | re.MULTILINE
)
# Text in a block -> why it cannot pass yet. Such blocks are self-contained and run as xfail(strict=False).
PENDING: dict[str, str] = {}
# Pages whose blocks take over ~15 s (ONNX export; lr-find + search): they run with `make test-slow`.
SLOW_PAGES = {"docs/evaluation.md", "docs/tuning.md"}
# Commands that read a recipe: keep them single-process and quiet (both may also be changed on --resume).
RECIPE_COMMANDS = {"train", "check", "lr-find", "search", "preview"}
QUIET = ["--set", "data.num_workers=0", "--set", "trainer.progress_bar=false"]
# Random tiny features separate a few images more slowly than pretrained ones: the overfit check gets more steps.
EXTRA = {"check": ["--steps", "400"]}


def runnable_blocks(page: Path) -> list[dict]:
    blocks = []
    text = page.read_text(encoding="utf-8")
    # Examples of the convention itself sit inside ````-fences: blank them out, keeping line numbers.
    text = re.sub(r"^````.*?^````", lambda m: "\n" * m[0].count("\n"), text, flags=re.DOTALL | re.MULTILINE)
    for match in BLOCK.finditer(text):
        opts = dict(o.split("=", 1) for o in (match["opts"] or "").split() if "=" in o)
        line = text[: match.start()].count("\n") + 1
        pending = next((why for key, why in PENDING.items() if key in match["body"]), None)
        blocks.append({"lang": match["lang"], "body": match["body"], "opts": opts, "line": line, "pending": pending})
    return blocks


def _cases():
    for page in PAGES:
        blocks = runnable_blocks(page)
        name = page.relative_to(REPO).as_posix()
        if any(not b["pending"] for b in blocks):
            yield pytest.param(page, None, id=name, marks=[pytest.mark.slow] if name in SLOW_PAGES else [])
        for b in blocks:
            if b["pending"]:
                yield pytest.param(page, b["line"], id=f"{name}:{b['line']}",
                                   marks=pytest.mark.xfail(strict=False, reason=b["pending"]))


@pytest.fixture
def tiny_world(tmp_path, monkeypatch):
    """A working folder with my_images/ and recipes/, and every backbone replaced by a tiny random one at 32 px."""
    from tlkit.model import classifier
    from tlkit.model.settings import BackboneConfig
    from tlkit.run import build

    real = classifier.create_backbone

    def tiny_backbone(name, weights, **kwargs):
        return real("test_resnet", "none", **kwargs)

    monkeypatch.setattr(classifier, "create_backbone", tiny_backbone)
    monkeypatch.setattr(build, "create_backbone", tiny_backbone)
    monkeypatch.setattr(BackboneConfig, "preprocessing_overrides", lambda self: {"input_size": 32})
    write_colour_classes(tmp_path / "my_images", per_class=12)
    shutil.copytree(REPO / "recipes", tmp_path / "recipes")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize(("page", "pending_line"), list(_cases()))
def test_runnable_blocks(page: Path, pending_line: int | None, tiny_world: Path):
    for block in runnable_blocks(page):
        if (block["line"] == pending_line) if pending_line is not None else not block["pending"]:
            where = f"{page.name}:{block['line']}"
            if "file" in block["opts"]:
                (tiny_world / block["opts"]["file"]).write_text(block["body"], encoding="utf-8")
            elif block["lang"] == "python":
                exec(compile(block["body"], where, "exec"), {"__name__": "__docs__"})  # noqa: S102 (the point)
            elif block["lang"] in ("bash", "sh", "console"):
                for command in shell_commands(block["body"]):
                    assert run_command(command) == 0, f"{where}: {command!r} failed"
            else:
                pytest.fail(f"{where}: runnable block in {block['lang']!r}; expected bash, python or file=NAME")


def shell_commands(body: str) -> list[str]:
    """Lines of a shell block with backslash continuations joined (comments are dropped by shlex later)."""
    return [c for c in re.sub(r"\\\n\s*", " ", body).splitlines() if c.strip() and not c.lstrip().startswith("#")]


def run_command(command: str) -> int:
    from tlkit.cli.main import main

    argv = [a for arg in shlex.split(command, comments=True) for a in _expand(arg)]
    if argv[0] == "tlkit":
        extra = QUIET if argv[1] in RECIPE_COMMANDS else []
        return main(argv[1:] + extra + EXTRA.get(argv[1], []))
    if argv[0] == "python" and argv[1].startswith("scripts/"):
        extra = QUIET if argv[1] in {f"scripts/{c.replace('-', '_')}.py" for c in RECIPE_COMMANDS} else []
        old = sys.argv
        sys.argv = [str(REPO / argv[1]), *argv[2:], *extra]
        try:
            runpy.run_path(str(REPO / argv[1]), run_name="__main__")
        except SystemExit as exc:
            return int(exc.code or 0)
        finally:
            sys.argv = old
        return 0
    pytest.fail(f"runnable shell blocks run only tlkit and scripts/ commands; got {command!r}")


def _expand(arg: str) -> list[str]:
    if "*" in arg or "?" in arg:
        return sorted(glob.glob(arg)) or [arg]
    return [arg]


def _reference_hook():
    """(MARKER, render_reference) from the MkDocs hook that generates the recipe reference page."""
    sys.path.insert(0, str(REPO / "docs" / "hooks"))
    try:
        from recipe_reference import MARKER, render_reference
    finally:
        sys.path.pop(0)
    return MARKER, render_reference


def test_every_recipe_field_is_in_the_reference():
    """The recipe reference page is generated from the settings models: every field, with its reason."""
    MARKER, render_reference = _reference_hook()
    from tlkit.recipe import Recipe

    text = render_reference()
    assert MARKER in (REPO / "docs" / "recipe-reference.md").read_text(encoding="utf-8")
    for section in ("backbone", "strategy", "head", "data", "augment", "mixing", "optim", "schedule", "trainer",
                    "tta", "cache", "output", "logging"):
        assert f"## `{section}`" in text
    assert set(Recipe.model_fields) <= set(re.findall(r"## `(\w+)`", text)) | {"version", "name", "seed"}
    assert "| `jitter.hue` |" in text and "| `probe_epochs` |" in text and "| `backbone_lr_mult` |" in text


def test_docs_have_no_paths_outside_the_repository():
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for bad in ("../shared", "shared/datasets", "DESIGN.md", "this machine's local wheels"):
            assert bad not in text, f"{page.name} mentions {bad!r}"


def test_generated_reference_uses_words_for_users():
    _, render_reference = _reference_hook()
    text = render_reference()
    for internal in ("seeds", "DESIGN.md", "contract "):
        assert internal not in text, f"the recipe reference says {internal!r}: reword the field docstring"
