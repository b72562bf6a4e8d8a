"""One run's sections of the report, each an HTML fragment. Every string from the run (class names, paths, recipe
text, warnings) goes through `esc`; images are data: URIs, so the page loads nothing."""

from __future__ import annotations

import csv
import html
import shlex
from pathlib import Path

from tlkit.report import figures
from tlkit.report.runs import MAX_LISTED, Evaluation, Run, final_numbers, is_number


def esc(value) -> str:
    return html.escape(str(value), quote=True)


def fmt(name: str, value) -> str:
    """A summary figure as text: accuracies in %, losses with 4 decimals, n/a when missing."""
    if value is None:
        return "n/a"
    if is_number(value) and ("acc" in name or "F1" in name or "mAP" in name):
        return f"{value:.2%}"
    if is_number(value) and isinstance(value, float):
        return f"{0.0 if abs(value) < 5e-5 else value:.4f}"  # no "-0.0000" for a loss of -log(1.0)
    return str(value)


def table(headers: list[str] | None, rows: list[list], *, cls: str = "") -> str:
    """An HTML table (no header row when headers is None), every cell escaped."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers or [])
    head = f"<thead><tr>{head}</tr></thead>" if head else ""
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{esc(cls)}">{head}<tbody>{body}</tbody></table>'


def figure(uri: str, alt: str, caption: str = "", *, cls: str = "") -> str:
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return f'<figure class="{esc(cls)}"><img src="{uri}" alt="{esc(alt)}">{cap}</figure>'


def hint(text: str, command: str = "") -> str:
    code = f"<pre class=\"command\">{esc(command)}</pre>" if command else ""
    return f'<p class="hint">{esc(text)}</p>{code}'


def summary(run: Run) -> str:
    rows = [[name, fmt(name, value)] for name, value in final_numbers(run).items() if value is not None]
    state = "" if run.metrics else hint("This run has not finished (no metrics.json): the figures are from the last "
                                        "epoch in metrics.csv.")
    return state + table(["", "final"], rows, cls="numbers")


def curves(run: Run) -> str:
    uri = figures.curves_figure([run])
    if uri is None:
        return hint("No complete epoch in metrics.csv yet.")
    return figure(uri, "loss and accuracy curves", "train dashed, validation solid")


def learning_rate(run: Run) -> str:
    uri = figures.lr_figure([run])
    return figure(uri, "learning rate per group") if uri else hint("No lr-* columns in metrics.csv.")


def evaluation(run: Run) -> str:
    """Every policy of every eval/<checkpoint>/report.json: accuracy and cost, confusion matrix, per-class P/R."""
    if not run.evaluations:
        return hint("No evaluation in this run directory yet. Produce the confusion matrix, per-class precision/recall "
                    "and top losses with:", evaluate_command(run))
    return "".join(_evaluation(ev) for ev in run.evaluations)


def evaluate_command(run: Run) -> str:
    data = (run.recipe.get("data") or {}).get("root") or "DATA_DIR"
    return f"tlkit evaluate --checkpoint {shlex.quote(str(run.path / 'checkpoints' / 'best.ckpt'))} " \
           f"--data {shlex.quote(str(data))}"


def _evaluation(ev: Evaluation) -> str:
    report = ev.report
    if report.get("multi_label"):
        return _multilabel_evaluation(ev)
    rows = [[label, e.get("views"), fmt("acc", e.get("accuracy")), fmt("acc", e.get("balanced_accuracy")),
             fmt("loss", e.get("nll")), fmt("ms", e.get("ms_per_image"))] for label, e in report["policies"].items()]
    head = (f"<h4>checkpoint {esc(ev.name)}: {esc(report.get('num_images', '?'))} images of "
            f"<code>{esc(report.get('data', '?'))}</code> (split {esc(report.get('split', 'val'))})</h4>")
    policies = table(["TTA policy", "views", "top-1", "balanced acc", "NLL", "ms/image"], rows, cls="numbers")
    details = "".join(_policy_details(label, e, report.get("classes", []), first=i == 0)
                      for i, (label, e) in enumerate(report["policies"].items()))
    return head + policies + details


def _policy_details(label: str, entry: dict, classes: list[str], *, first: bool) -> str:
    per_class = table(["class", "precision", "recall", "F1", "support"],
                      [[r["class"], fmt("acc", r["precision"]), fmt("acc", r["recall"]), fmt("acc", r["f1"]),
                        r["support"]] for r in entry.get("per_class", [])], cls="numbers")
    confused = entry.get("most_confused") or []
    pairs = table(["true", "predicted as", "images"], [[p["true"], p["predicted"], p["count"]] for p in confused]) \
        if confused else "<p>No confusions.</p>"
    matrix = confusion_table(entry.get("confusion_matrix") or [], classes)
    return (f"<details{' open' if first else ''}><summary>{esc(label)}: confusion matrix and per-class "
            f"precision/recall</summary><div class=\"cols\"><div>{matrix}</div><div>{per_class}"
            f"<h5>most confused</h5>{pairs}</div></div></details>")


def _multilabel_evaluation(ev: Evaluation) -> str:
    """A multi-label report: mAP and F1 per policy, and per class AP / precision / recall / F1 at its threshold."""
    report = ev.report
    rows = [[label, e.get("views"), fmt("mAP", e.get("map")), fmt("F1", e.get("f1_micro")),
             fmt("F1", e.get("f1_macro")), fmt("acc", e.get("exact_match")), fmt("ms", e.get("ms_per_image"))]
            for label, e in report["policies"].items()]
    head = (f"<h4>checkpoint {esc(ev.name)}: {esc(report.get('num_images', '?'))} images of "
            f"<code>{esc(report.get('data', '?'))}</code> (split {esc(report.get('split', 'val'))}), multi-label</h4>")
    policies = table(["TTA policy", "views", "mAP", "F1 micro", "F1 macro", "exact match", "ms/image"], rows,
                     cls="numbers")
    details = "".join(
        f"<details{' open' if i == 0 else ''}><summary>{esc(label)}: per-class AP and F1 at its threshold</summary>"
        + table(["class", "AP", "precision", "recall", "F1", "threshold", "support"],
                [[r["class"], fmt("acc", r.get("ap")), fmt("acc", r["precision"]), fmt("acc", r["recall"]),
                  fmt("acc", r["f1"]), fmt("threshold", r.get("threshold")), r["support"]]
                 for r in e.get("per_class", [])], cls="numbers") + "</details>"
        for i, (label, e) in enumerate(report["policies"].items()))
    return head + policies + details


def confusion_table(matrix: list[list[int]], classes: list[str]) -> str:
    """Rows = true class, columns = predicted; shaded by share of the row (recall), as evaluate's PNG."""
    if not matrix:
        return "<p>No confusion matrix in the report.</p>"
    head = "".join(f'<th class="pred" title="{esc(c)}">{esc(c)}</th>' for c in classes)
    rows = []
    for name, row in zip(classes, matrix):
        total = max(sum(row), 1)
        cells = "".join(_matrix_cell(count, count / total) for count in row)
        rows.append(f'<tr><th title="{esc(name)}">{esc(name)}</th>{cells}</tr>')
    return (f'<div class="scroll"><table class="confusion"><thead><tr><th>true \\ predicted</th>{head}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table></div>')


def _matrix_cell(count: int, share: float) -> str:
    colour = "#fff" if share > 0.5 else "#111"
    return f'<td style="background: rgba(8, 81, 156, {share:.3f}); color: {colour}">{count}</td>'


def top_losses(run: Run) -> str:
    """evaluate's top-loss gallery and table for each policy."""
    if not run.evaluations:
        return hint("No top-loss images yet: run tlkit evaluate (see Evaluation above).")
    parts = []
    for ev in run.evaluations:
        for label, entry in ev.report["policies"].items():
            parts.append(_top_loss_details(run, ev, label, entry, first=not parts))
    return "".join(parts)


def _top_loss_details(run: Run, ev: Evaluation, label: str, entry: dict, *, first: bool) -> str:
    files = entry.get("files") or {}
    png = ev.folder / str(files.get("top_losses_png", f"{label}/top_losses.png"))
    uri = figures.file_uri(png, inside=run.path)
    if uri is not None:
        gallery = figure(uri, f"highest-loss images, {label}", cls="gallery")
    elif png.is_file():
        gallery = hint(f"{png} is not shown: the report inlines only PNG files inside the run folder.")
    else:  # multi-label: a table, no gallery
        gallery = "" if ev.report.get("multi_label") else hint(f"{png} is missing.")
    rows = _csv_rows(ev.folder / str(files.get("top_losses_csv", f"{label}/top_losses.csv")), inside=run.path)
    listing = table(["image", "true", "predicted", "p(true)", "loss"],
                    [[r.get("path", ""), r.get("true", ""), r.get("predicted", ""), r.get("p_true", ""),
                      r.get("loss", "")] for r in rows], cls="paths") if rows else ""
    return (f"<details{' open' if first else ''}><summary>{esc(ev.name)} / {esc(label)}</summary>"
            f"{gallery}{listing}</details>")


def _csv_rows(path: Path, inside: Path) -> list[dict]:
    """evaluate's top-loss table; only a CSV inside the run folder (report.json names it, so it could name any file)."""
    try:
        if not path.resolve(strict=True).is_relative_to(inside.resolve()) or not path.is_file():
            return []
        with path.open(newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))
    except (OSError, RuntimeError, UnicodeDecodeError, csv.Error):  # missing, a symlink loop, damaged: no table
        return []


def data_warnings(run: Run) -> str:
    """The preflight's warnings and every file skipped at scan time, mid-run or during evaluation."""
    m = run.metrics
    items = [esc(w) for w in m.get("data_warnings") or []]
    mid = {k: v for k, v in (m.get("skipped_mid_run") or {}).items() if v}
    if mid:
        items.append(esc("skipped while training: " + ", ".join(f"{v} {k}" for k, v in mid.items())))
    parts = [f"<ul>{''.join(f'<li>{i}</li>' for i in items)}</ul>"] if items else []
    for name, lines in (("skipped.txt (unreadable at scan)", run.skipped),
                        ("skipped_mid_run.txt (failed while training)", run.skipped_mid_run)):
        if lines:
            parts.append(_skipped_list(name, lines))
    for ev in run.evaluations:
        skipped = [f"{s.get('path')}\t{s.get('reason')}" for s in ev.report.get("skipped") or []]
        if skipped:
            parts.append(_skipped_list(f"skipped by evaluate ({ev.name})", skipped))
    if not parts:
        return "<p>No data warnings and no skipped files.</p>"
    return "".join(parts)


def _skipped_list(name: str, lines: list[str]) -> str:
    rows = [line.split("\t", 1) + [""] * (1 - line.count("\t")) for line in lines[:MAX_LISTED]]
    more = f"<p>… and {len(lines) - MAX_LISTED} more.</p>" if len(lines) > MAX_LISTED else ""
    return f"<h4>{esc(name)}: {len(lines)} file(s)</h4>" + table(["file", "why"], rows, cls="paths") + more


def augmentation(run: Run) -> str:
    augment = run.recipe.get("augment") or {}
    mixing = run.recipe.get("mixing") or {}
    line = (f"<p>augment preset <code>{esc(augment.get('preset', '?'))}</code>, mixup "
            f"{esc(mixing.get('mixup_alpha', 0))}, cutmix {esc(mixing.get('cutmix_alpha', 0))}</p>")
    uri = figures.file_uri(run.preview, inside=run.preview.parent) if run.preview is not None else None
    if uri is not None:  # found by its fixed name in the run folder or its recipe's folder; still a PNG there
        return line + figure(uri, "augmentation preview",
                             f"{run.preview} (tlkit preview): training samples as the model sees them", cls="gallery")
    command = (f"tlkit preview --recipe {shlex.quote(str(run.path / 'recipe.yaml'))} "
               f"--out {shlex.quote(str(run.path / 'augment_preview.png'))}")
    return line + hint("No augmentation preview in this run directory. See what the model trains on with:", command)


def diagnosis(run: Run) -> str:
    d = run.diagnosis
    if d is None:
        return hint(f"No verdict: {run.diagnosis_note}.")
    v = d.values
    advice = "".join(f"<li>{esc(a)}</li>" for a in d.advice)
    return (f'<p class="verdict verdict-{esc(d.verdict.replace(" ", "-"))}"><strong>{esc(d.verdict.upper())}</strong>'
            f": {esc(d.reason)}</p><p>final epoch {esc(v['epochs'])}: train acc {fmt('acc', v['train_acc'])}, "
            f"val acc {fmt('acc', v['val_acc'])}; best val epoch {esc(v['best_val_epoch'] + 1)}</p>"
            f"<ul>{advice}</ul><p class=\"hint\">As tlkit diagnose {esc(run.path)} says (default thresholds).</p>")


def provenance(run: Run) -> str:
    if not run.provenance:
        return hint("No provenance.json: this run predates provenance records, or was stopped before they were "
                    "written.")
    record = dict(run.provenance)
    if isinstance(record.get("command"), list):
        record["command"] = shlex.join(str(a) for a in record["command"])
    return table(None, [[k, v] for k, v in flatten(record).items()], cls="kv")


def recipe(run: Run) -> str:
    if not run.recipe_text:
        return hint("No recipe.yaml in this run directory.")
    return f"<pre class=\"recipe\">{esc(run.recipe_text)}</pre>"


def flatten(value, prefix: str = "") -> dict[str, str]:
    """{'a': {'b': 1}} -> {'a.b': '1'}; lists as compact text (the recipe diff and provenance tables)."""
    if isinstance(value, dict) and value:
        out: dict[str, str] = {}
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(value, list):
        text = ", ".join(str(v) for v in value)
        return {prefix: f"[{text}]"}
    return {prefix: "null" if value is None else str(value)}
