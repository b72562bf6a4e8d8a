"""tlkit report: one self-contained HTML page per run (or several runs compared), from real tiny runs.

The fast tests read the HTML; the slow one opens it in a real headless Chromium (the distribution's package, driven
by Playwright) and checks what a person would see: no console errors, every section, a picture that is not blank.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from conftest import tiny_recipe_dict, write_colour_classes

from tlkit.errors import ReportError
from tlkit.report import write_report

REPO = Path(__file__).resolve().parents[1]
ODD_CLASS = "<b>&red"  # must reach the page as text, never as markup
# The page's promised sections, in order (written here, not read from the module that renders them)
RUN_KEYS = ["summary", "curves", "lr", "evaluation", "top-losses", "data-warnings", "augmentation", "diagnosis",
            "provenance", "recipe"]
COMPARE_KEYS = ["compare-numbers", "compare-curves", "recipe-diff"]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """Run A (3 classes, one named '<b>&red', an unreadable file, evaluated, with an augmentation preview) and run B
    (another optimiser and epoch count, nothing else): the two cases of every section."""
    from tlkit.recipe import validate_recipe
    from tlkit.run import evaluate_checkpoint, fit, preview_augment

    tmp = tmp_path_factory.mktemp("report")
    root = write_colour_classes(tmp / "colours")
    for split in ("train", "val"):
        (root / split / "red").rename(root / split / ODD_CLASS)
    (root / "train" / "blue" / "broken.png").write_bytes(b"not a png")
    recipe_a = validate_recipe(tiny_recipe_dict(root, backbone={"name": "test_resnet"},
                                                optim={"name": "adamw", "lr": 0.3}, trainer={"epochs": 2}))
    fit(recipe_a, run_dir=tmp / "a" / "run")
    evaluate_checkpoint(tmp / "a" / "run" / "checkpoints" / "best.ckpt", root, top_losses=4)
    preview_augment(recipe_a, n=4, out=tmp / "a" / "run" / "augment_preview.png")
    recipe_b = validate_recipe(tiny_recipe_dict(root, backbone={"name": "test_resnet"},
                                                optim={"name": "sgd", "lr": 0.1}, trainer={"epochs": 1}))
    fit(recipe_b, run_dir=tmp / "b" / "run")
    return {"root": root, "a": tmp / "a" / "run", "b": tmp / "b" / "run", "tmp": tmp}


class _Page(HTMLParser):
    """The parts of the page the tests look at: section keys, run articles and every resource reference."""

    def __init__(self, text: str):
        super().__init__()
        self.sections: list[str] = []
        self.runs: list[str] = []
        self.references: list[str] = []
        self.tags: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        if "data-section" in attrs:
            self.sections.append(attrs["data-section"])
        if "data-run" in attrs:
            self.runs.append(attrs["data-run"])
        self.references += [attrs[k] for k in ("src", "href", "srcset", "poster", "data") if attrs.get(k)]


def test_one_run_report_has_every_section(runs):
    out = write_report([runs["a"]])
    assert out == runs["a"] / "report.html"
    text = out.read_text(encoding="utf-8")
    page = _Page(text)
    assert page.sections == RUN_KEYS
    assert "checkpoint best" in text and 'class="confusion"' in text  # evaluate's report.json was read
    assert "highest-loss images" in text and "augmentation preview" in text
    assert "broken.png" in text  # skipped.txt is listed under the data warnings
    for word in ("verdict", "recipe_sha256", "versions.timm", "optim:", "alt=\"learning rate per group\""):
        assert word in text
    assert text.count("data:image/png;base64,") >= 4  # curves, LR, top losses, preview


def section_html(text: str, key: str) -> str:
    start = text.index(f'data-section="{key}"')
    end = text.find("<section", start)
    return text[start: end if end >= 0 else len(text)]


def test_report_shows_the_runs_numbers_and_confusion_matrix(runs, tmp_path):
    """The summary's figures are metrics.json's (accuracies in %, losses with 4 decimals) and the confusion matrix's
    cells are evaluate's report.json's, row by row (a copy of run A evaluated on its val images filed one class over,
    so the matrix is not symmetric)."""
    from tlkit.run import evaluate_checkpoint

    run = shutil.copytree(runs["a"], tmp_path / "run")
    shutil.rmtree(run / "eval")
    classes = json.loads((run / "classes.json").read_text())
    shifted = tmp_path / "shifted"
    for i, name in enumerate(classes):
        for split in ("train", "val"):
            shutil.copytree(runs["root"] / split / name, shifted / split / classes[(i + 1) % len(classes)])
    evaluate_checkpoint(run / "checkpoints" / "best.ckpt", shifted, tta=["none"], top_losses=2)
    text = write_report([run], out=tmp_path / "numbers.html").read_text(encoding="utf-8")
    metrics = json.loads((run / "metrics.json").read_text())
    cells = re.findall(r"<td>(.*?)</td><td>(.*?)</td>", section_html(text, "summary"))
    shown = dict(cells)
    assert shown["val accuracy"] == f"{100 * metrics['val_acc']:.2f}%"
    assert shown["best val accuracy"] == f"{100 * metrics['best_val_acc']:.2f}%"
    assert shown["val macro F1"] == f"{100 * metrics['val_macro_f1']:.2f}%"
    assert shown["val loss"] == f"{metrics['val_loss']:.4f}" and shown["train loss"] == f"{metrics['train_loss']:.4f}"
    assert shown["train / val images"] == f"{metrics['num_train']} / {metrics['num_val']}"
    (report_file,) = (run / "eval").glob("*/report.json")
    report = json.loads(report_file.read_text())
    matrix = report["policies"]["none"]["confusion_matrix"]
    assert sum(map(sum, matrix)) == report["num_images"] == metrics["num_val"]
    assert matrix != [list(column) for column in zip(*matrix)]  # a transposed table would show
    table = section_html(text, "evaluation")
    table = table[table.index('class="confusion"'):]
    table = table[: table.index("</table>")]
    rows = [[int(n) for n in re.findall(r"<td[^>]*>(\d+)</td>", row)] for row in table.split("<tr>")[2:]]
    assert rows == matrix


def test_report_loads_nothing_from_the_network(runs):
    text = write_report([runs["a"], runs["b"]], out=runs["tmp"] / "both.html").read_text(encoding="utf-8")
    page = _Page(text)
    assert page.references, "expected inline images and in-page links"
    outside = [r for r in page.references if not r.startswith(("data:", "#"))]
    assert not outside, f"resources outside the page: {outside[:3]}"
    assert not re.search(r"https?://", text), "no URL may appear in a page that must work offline"
    assert not re.search(r"url\((?!['\"]?data:)|@import", text), "CSS must not load anything"
    assert {"link", "script", "iframe"}.isdisjoint(page.tags)


def test_class_names_and_paths_are_escaped(runs):
    text = write_report([runs["a"]], out=runs["tmp"] / "escaped.html").read_text(encoding="utf-8")
    assert ODD_CLASS not in text
    assert "&lt;b&gt;&amp;red" in text
    assert "<b>" not in text  # no stray markup from any user string
    assert ODD_CLASS in json.loads((runs["a"] / "classes.json").read_text())  # the run really has that class


def test_two_runs_compared_side_by_side(runs):
    out = write_report([runs["a"], runs["b"]], out=runs["tmp"] / "two.html")
    text = out.read_text(encoding="utf-8")
    page = _Page(text)
    assert page.sections == COMPARE_KEYS + RUN_KEYS + RUN_KEYS
    assert page.runs == ["a/run", "b/run"]  # the shortest path suffix that tells the runs apart
    diff = text[text.index('data-section="recipe-diff"'):text.index('id="run-0"')]
    for key, a, b in (("optim.name", "adamw", "sgd"), ("optim.lr", "0.3", "0.1"), ("trainer.epochs", "2", "1")):
        assert re.search(rf"<td>{re.escape(key)}</td><td>{a}</td><td>{b}</td>", diff), key
    assert "data.root" not in diff  # same data: not a difference
    run_b = text[text.index('id="run-1"'):]
    assert f"tlkit evaluate --checkpoint {runs['b'] / 'checkpoints' / 'best.ckpt'} --data" in run_b
    assert "tlkit preview --recipe" in run_b


def test_default_paths_and_what_may_be_replaced(runs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert write_report([runs["a"], runs["b"]]) == Path("tlkit-report.html")
    assert write_report([runs["a"], runs["b"]]) == Path("tlkit-report.html")  # an earlier report is replaced
    notes = tmp_path / "notes.html"
    notes.write_text("<p>mine</p>")
    with pytest.raises(ReportError, match="not a tlkit report"):
        write_report([runs["a"]], out=notes)
    assert notes.read_text() == "<p>mine</p>"
    with pytest.raises(ReportError, match="is a folder"):
        write_report([runs["a"]], out=tmp_path)


def test_cli_report_and_one_line_error_for_a_folder_that_is_not_a_run(runs, tmp_path, capsys):
    from tlkit.cli.main import main

    assert main(["report", str(runs["a"]), "--out", str(tmp_path / "r.html")]) == 0
    assert f"wrote {tmp_path / 'r.html'}" in capsys.readouterr().out
    assert main(["report", str(runs["a"]), str(runs["root"])]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not a tlkit run directory" in err and "tlkit train" in err
    assert main(["report", str(tmp_path / "missing")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_unfinished_run_still_gets_a_report(runs, tmp_path):
    """A run killed mid-way has recipe.yaml and metrics.csv but no metrics.json: figures from the last epoch."""
    for name in ("recipe.yaml", "metrics.csv"):
        shutil.copy(runs["b"] / name, tmp_path / name)
    text = write_report([tmp_path]).read_text(encoding="utf-8")
    assert _Page(text).sections == RUN_KEYS
    assert "has not finished" in text and "No provenance.json" in text


def test_report_imports_no_torch(runs, tmp_path):
    """`tlkit report` only reads files: it must work (and start fast) without torch or Lightning."""
    code = ("import sys; from tlkit.report import write_report; write_report(sys.argv[1:2], out=sys.argv[2]); "
            "print(sorted(m for m in ('torch', 'lightning', 'timm') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code, str(runs["a"]), str(tmp_path / "r.html")], check=False, cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.slow
def test_report_in_headless_chromium(runs, tmp_path):
    """The two-run page in a real browser: no console or page errors, no request leaves the file, every section and
    image renders, and the screenshot is a picture (many colours), not a blank page."""
    # CI (.ci/run) sets TLKIT_REQUIRE_BROWSER=1: there a missing browser fails this test instead of skipping it.
    missing = pytest.fail if os.environ.get("TLKIT_REQUIRE_BROWSER") == "1" else pytest.skip
    if not CHROMIUM.is_file():
        missing(f"{CHROMIUM} not found: apt-get install chromium (.ci/run does this before make test-slow)")
    try:
        from playwright import sync_api
    except ImportError:
        missing("playwright not installed: pip install playwright")
    import numpy as np
    from PIL import Image

    page_file = write_report([runs["a"], runs["b"]], out=tmp_path / "report.html")
    errors, outside = [], []
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.route("**/*", lambda route: route.continue_() if route.request.url.startswith(("file:", "data:"))
                       else (outside.append(route.request.url), route.abort()))
            page.goto(page_file.as_uri(), wait_until="load")
            sections = page.eval_on_selector_all("[data-section]", "els => els.map(e => e.dataset.section)")
            broken = page.evaluate("[...document.images].filter(i => !i.complete || i.naturalWidth === 0).length")
            images = page.evaluate("document.images.length")
            overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
            page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        finally:
            browser.close()
    assert not errors, errors
    assert not outside, outside
    assert sections == COMPARE_KEYS + RUN_KEYS + RUN_KEYS
    assert images >= 8 and broken == 0
    assert overflow <= 0, "the page scrolls sideways"
    pixels = np.asarray(Image.open(tmp_path / "report.png").convert("RGB"))
    assert pixels.shape[0] > 2000 and pixels.std() > 20
    packed = pixels[::2, ::2].astype(np.uint32) @ np.array([1 << 16, 1 << 8, 1], dtype=np.uint32)  # RGB -> one int
    assert len(np.unique(packed)) > 500
