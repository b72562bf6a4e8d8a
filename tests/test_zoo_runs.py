"""The hostile-input zoo for runs, trackers, reports and exports (issue 26), through the `tlkit` CLI.

As in test_reliability.py: each case expects the documented safe behaviour or a non-zero exit with one `error:` line,
no traceback, and every file the user had still there, byte for byte. docs/bad-input.md lists these cases.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml
from conftest import tiny_recipe_dict, write_colour_classes
from PIL import Image
from test_reliability import assert_one_error_line, cli, untouched

from tlkit.cli.main import main

REPO = Path(__file__).resolve().parents[1]
PASSWORD = "Pl4nted-s3cret"  # grep'd for everywhere tlkit prints or writes


@pytest.fixture
def recipe_file(tmp_path) -> Path:
    root = write_colour_classes(tmp_path / "colours", per_class=6)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe_dict(root, backbone={"name": "test_resnet"}, trainer={"epochs": 1})))
    return path


def _free_port() -> int:
    """A port on 127.0.0.1 where nothing listens: a connection to it is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------------------------------
# 1. Secrets: a password in a tracking URI is never printed or written


class FakeMlflowServer(ThreadingHTTPServer):
    """The few REST calls MLflow's client makes for one run, answered as a tracking server would; every request is
    kept (path, Authorization header, body). Artifacts go to a local folder (the run's artifact_uri)."""

    def __init__(self, artifacts: Path):
        super().__init__(("127.0.0.1", 0), _MlflowHandler)
        self.artifacts = artifacts
        self.requests: list[tuple[str, str, str]] = []
        self.run: dict = {}

    @property
    def port(self) -> int:
        return self.server_address[1]


class _MlflowHandler(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:  # quiet
        pass

    def _answer(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _handle(self, method: str) -> None:
        server: FakeMlflowServer = self.server  # type: ignore[assignment]
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode() if length else ""
        url = urlsplit(self.path)
        server.requests.append((self.path, self.headers.get("Authorization", ""), body))
        endpoint = url.path.split("/mlflow/", 1)[-1]
        if endpoint == "experiments/get-by-name":
            return self._answer(404, {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "no such experiment"})
        if endpoint == "experiments/create":
            return self._answer(200, {"experiment_id": "1"})
        if endpoint == "runs/create":
            tags = {t["key"]: t["value"] for t in json.loads(body).get("tags", [])}
            server.run = {"info": {"run_id": "r1", "run_uuid": "r1", "experiment_id": "1", "status": "RUNNING",
                                   "run_name": tags.get("mlflow.runName", "run"), "start_time": 0,
                                   "lifecycle_stage": "active", "artifact_uri": server.artifacts.as_uri()},
                          "data": {"tags": [{"key": k, "value": v} for k, v in tags.items()]}}
            return self._answer(200, {"run": server.run})
        if endpoint == "runs/get":
            assert parse_qs(url.query).get("run_id") == ["r1"]
            return self._answer(200, {"run": server.run})
        if endpoint == "runs/update":
            return self._answer(200, {"run_info": server.run["info"]})
        return self._answer(200, {})  # log-batch, set-tag, ...: accepted

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PATCH(self) -> None:
        self._handle("PATCH")


@pytest.fixture
def mlflow_server(tmp_path):
    server = FakeMlflowServer(tmp_path / "server-artifacts")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _everything_under(*roots: Path) -> bytes:
    return b"".join(p.read_bytes() for root in roots for p in sorted(root.rglob("*")) if p.is_file())


def test_secrets_leak_planted_password_is_nowhere_in_the_run_report_console_or_tracker(recipe_file, tmp_path,
                                                                                       mlflow_server, capsys):
    pytest.importorskip("mlflow", reason="pip install mlflow-skinny (CI installs it with the dev extra)")
    pytest.importorskip("tensorboard", reason="pip install tensorboard (CI installs it with the dev extra)")
    run_dir = tmp_path / "run"
    uri = f"http://bob:{PASSWORD}@127.0.0.1:{mlflow_server.port}"
    command = [sys.executable, "-m", "tlkit", "train", "--recipe", str(recipe_file), "--run-dir", str(run_dir),
               "--set", "logging.loggers=[tensorboard, mlflow]", "--set", f"logging.mlflow.tracking_uri={uri}"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    done = subprocess.run(command, cwd=tmp_path, env={**env, "PYTHONPATH": str(REPO)}, capture_output=True, check=False,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    console = done.stdout + done.stderr
    assert "View run" in console and f"127.0.0.1:{mlflow_server.port}" in console  # MLflow's own line, masked
    assert (run_dir / "tensorboard").is_dir() and (mlflow_server.artifacts / "recipe.yaml").is_file()

    code = main(["report", str(run_dir)])
    assert code == 0
    report_console = capsys.readouterr()
    seen = (console + report_console.out + report_console.err).encode() + _everything_under(run_dir,
                                                                                            mlflow_server.artifacts)
    seen += "".join(path + body for path, _, body in mlflow_server.requests).encode()  # what the server was sent
    assert PASSWORD.encode() not in seen
    assert b"bob:***@127.0.0.1" in (run_dir / "recipe.yaml").read_bytes()  # shown masked, not dropped
    assert any("bob:***@" in arg for arg in json.loads((run_dir / "provenance.json").read_text())["command"])
    # The credentials still reach the server, as HTTP basic auth (MLflow's own environment variables).
    assert f"Basic {base64.b64encode(f'bob:{PASSWORD}'.encode()).decode()}" in {a for _, a, _ in mlflow_server.requests}


def test_secrets_leak_recipe_show_masks_the_password(recipe_file, capsys):
    code = main(["recipe", "show", str(recipe_file), "--set",
                 f"logging.mlflow.tracking_uri=https://u:{PASSWORD}@h:5000"])
    out = capsys.readouterr().out
    assert code == 0 and "tracking_uri: https://u:***@h:5000" in out and PASSWORD not in out


def test_secrets_leak_report_masks_a_run_written_before_passwords_were_masked(trained_run, tmp_path, capsys):
    run = tmp_path / "old-run"
    shutil.copytree(trained_run[1], run)
    with (run / "recipe.yaml").open("a") as f:
        f.write(f"# tracking_uri: http://bob:{PASSWORD}@db.example:5000\n")
    record = json.loads((run / "provenance.json").read_text())
    record["command"] += ["--set", f"logging.mlflow.tracking_uri=http://bob:{PASSWORD}@db.example:5000"]
    (run / "provenance.json").write_text(json.dumps(record))
    assert cli(["report", run], capsys)[0] == 0
    page = (run / "report.html").read_text()
    assert PASSWORD not in page and "bob:***@db.example:5000" in page


# ---------------------------------------------------------------------------------------------------------------------
# 2. An unreachable tracker: one warning, training goes on, local files kept


def test_unreachable_tracker_warns_once_and_the_run_finishes(recipe_file, tmp_path, capsys, caplog):
    pytest.importorskip("mlflow", reason="pip install mlflow-skinny (CI installs it with the dev extra)")
    run_dir = tmp_path / "run"
    uri = f"http://127.0.0.1:{_free_port()}"
    started = time.monotonic()
    with untouched(recipe_file.parent):
        code, err = cli(["train", "--recipe", recipe_file, "--run-dir", run_dir, "--set", "logging.loggers=[mlflow]",
                         "--set", f"logging.mlflow.tracking_uri={uri}"], capsys)
    assert code == 0 and "Traceback" not in err, err
    assert time.monotonic() - started < 120  # was 260 s of retries before the first epoch (most of this: training)
    warnings = [r.getMessage() for r in caplog.records if "cannot reach" in r.getMessage()]
    assert len(warnings) == 1 and uri in warnings[0] and "training continues without MLflow" in warnings[0]
    assert (run_dir / "metrics.json").is_file() and (run_dir / "checkpoints" / "last.ckpt").is_file()


def test_unreachable_tracker_is_found_in_milliseconds_not_minutes():
    from tlkit.run.loggers import unreachable

    started = time.monotonic()
    why = unreachable(f"http://user:pw@127.0.0.1:{_free_port()}/mlflow")
    assert time.monotonic() - started < 2 and "refused" in why.lower()


def test_tracker_failing_mid_run_is_switched_off_with_one_warning(caplog):
    from lightning.pytorch.loggers import Logger

    from tlkit.run.loggers import GuardedTracker

    class DiesAfterOneCall(Logger):
        calls = 0
        name, version = "dies", 0

        def log_hyperparams(self, params, *args, **kwargs):
            pass

        def log_metrics(self, metrics, step=None):
            self.calls += 1
            if self.calls > 1:
                raise ConnectionError(f"http://bob:{PASSWORD}@host: Max retries exceeded")

    inner = DiesAfterOneCall()
    tracker = GuardedTracker(inner)
    for step in range(5):
        tracker.log_metrics({"val_acc": 0.5}, step)
    tracker.finalize("success")
    warnings = [r.getMessage() for r in caplog.records if "stopped working" in r.getMessage()]
    assert inner.calls == 2 and tracker.failed and len(warnings) == 1
    assert "ConnectionError" in warnings[0] and "bob:***@host" in warnings[0] and PASSWORD not in warnings[0]


# ---------------------------------------------------------------------------------------------------------------------
# 4. export --out: a user's folder is never overwritten without --overwrite


def _export(trained_run, out: Path, *extra) -> list:
    return ["export", "--checkpoint", trained_run[1] / "checkpoints" / "last.ckpt", "--out", out, "--no-onnx", *extra]


def test_export_into_a_users_folder_is_refused(trained_run, tmp_path, capsys):
    out = tmp_path / "my_project"
    out.mkdir()
    (out / "predict.py").write_text("print('my own predict script')\n")
    (out / "model.json").write_text('{"mine": true}\n')
    with untouched(out):
        code, err = cli(_export(trained_run, out), capsys)
    assert_one_error_line(code, err, str(out), "not an earlier tlkit export", "--overwrite", expected=1)
    assert sorted(p.name for p in out.iterdir()) == ["model.json", "predict.py"]


def test_export_overwrite_writes_the_export_and_leaves_other_files(trained_run, tmp_path, capsys):
    out = tmp_path / "my_project"
    out.mkdir()
    (out / "notes.txt").write_text("keep me\n")
    with untouched(out / "notes.txt"):
        code, err = cli(_export(trained_run, out, "--overwrite"), capsys)
    assert code == 0, err
    assert "export_format" in json.loads((out / "model.json").read_text())


def test_export_again_into_an_earlier_export_needs_no_flag(trained_run, tmp_path, capsys):
    out = tmp_path / "export"
    assert cli(_export(trained_run, out), capsys)[0] == 0
    code, err = cli(_export(trained_run, out), capsys)
    assert code == 0, err


# ---------------------------------------------------------------------------------------------------------------------
# 5. SIGTERM: a non-zero exit (143), a message and the --resume command, at any stage


# Test-side hooks that hold a stage long enough for the signal to land in it (the signal interrupts the sleep).
STAGE_HOOKS = {
    "scanning": "tlkit.run.fit.build_datamodule",
    "feature_extraction": "tlkit.run.fit.choose_training_inputs",
    "training": None,  # real epochs: the signal lands after the first checkpoint
}
STAGES = [pytest.param(s, marks=pytest.mark.slow) if s == "feature_extraction" else s for s in sorted(STAGE_HOOKS)]


def _hold(target: str, marker: Path) -> str:
    module, name = target.rsplit(".", 1)
    return (f"import importlib, pathlib, time; m = importlib.import_module({module!r}); real = m.{name}\n"
            f"def held(*a, **k):\n    pathlib.Path({str(marker)!r}).touch(); time.sleep(120); return real(*a, **k)\n"
            f"m.{name} = held\n")


@pytest.mark.parametrize("stage", STAGES)
def test_sigterm_exits_143_with_the_resume_command(stage, recipe_file, tmp_path):
    run_dir, marker = tmp_path / "run", tmp_path / "stage-reached"
    hook = _hold(STAGE_HOOKS[stage], marker) if STAGE_HOOKS[stage] else ""
    start = hook + "import sys; from tlkit.cli.main import main; sys.exit(main(sys.argv[1:]))"
    command = [sys.executable, "-c", start, "train", "--recipe", str(recipe_file), "--run-dir", str(run_dir),
               "--set", "trainer.epochs=500", "--set", "cache.features=false"]
    process = subprocess.Popen(command, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    reached = marker if STAGE_HOOKS[stage] else run_dir / "checkpoints" / "last.ckpt"
    try:
        deadline = time.monotonic() + 120
        while not reached.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.3)
        with untouched(recipe_file.parent / "colours", recipe_file):
            process.send_signal(signal.SIGTERM)  # as `kill PID` or a batch scheduler's stop
            _, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 143, err[-3000:]
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("interrupted (SIGTERM)"), last
    if stage == "scanning":  # the run folder does not exist yet: nothing to resume
        assert "before training started" in last and not run_dir.exists()
    else:
        assert f"tlkit train --resume {run_dir}" in last
        assert not (run_dir / "metrics.json").exists()
    if stage == "training":
        assert "checkpoints/last.ckpt holds the last completed epoch" in last


# ---------------------------------------------------------------------------------------------------------------------
# 6. The report inlines only PNGs inside the run folder


def test_report_never_inlines_a_file_outside_the_run_folder(trained_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained_run[1], run)
    key = tmp_path / "id_rsa"
    key.write_text("-----BEGIN OPENSSH PRIVATE KEY----- hunter2\n")
    outside_png = tmp_path / "outside.png"
    Image.new("RGB", (4, 4), (255, 0, 0)).save(outside_png)
    inside_key = run / "eval" / "best" / "none" / "notes.png"  # inside, but not a PNG
    inside_key.parent.mkdir(parents=True)
    inside_key.write_bytes(key.read_bytes())
    (run / "eval" / "best" / "none" / "link.png").symlink_to(outside_png)
    policies = {name: {"files": {"top_losses_png": png, "top_losses_csv": str(tmp_path / "secrets.csv")}}
                for name, png in (("abs", str(key)), ("up", "../../../outside.png"), ("fake", "none/notes.png"),
                                  ("link", "none/link.png"))}
    (tmp_path / "secrets.csv").write_text("path,true,predicted,p_true,loss\nhunter2,a,b,0.1,2.3\n")
    (run / "eval" / "best" / "report.json").write_text(json.dumps({"policies": policies}))
    with untouched(tmp_path / "secrets.csv", key, outside_png):
        code, err = cli(["report", run], capsys)
    assert code == 0, err
    page = (run / "report.html").read_text()
    forbidden = [base64.b64encode(p.read_bytes()).decode()[:40] for p in (key, outside_png)]
    assert "hunter2" not in page and not any(f in page for f in forbidden)
    assert page.count("the report inlines only PNG files inside the run folder") == 4


# ---------------------------------------------------------------------------------------------------------------------
# 10. Damaged run files: one line, and --reproduce checks before it trains


@pytest.fixture
def run_copy(trained_run, tmp_path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(trained_run[1], run)
    return run


def _damage_metrics_csv(run: Path) -> None:
    lines = (run / "metrics.csv").read_text().splitlines()
    header = lines[0].split(",")
    cells = lines[2].split(",")
    cells[header.index("epoch")] = "oops"
    lines[2] = ",".join(cells)
    (run / "metrics.csv").write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("command", ["report", "diagnose"])
def test_metrics_csv_with_a_non_numeric_cell_is_one_line(command, run_copy, capsys):
    _damage_metrics_csv(run_copy)
    with untouched(run_copy / "metrics.csv"):
        code, err = cli([command, run_copy], capsys)
    assert_one_error_line(code, err, "metrics.csv, line 3, column 'epoch'", "'oops' is not a number", expected=1)


def test_non_utf8_recipe_is_one_line_for_report(run_copy, capsys):
    (run_copy / "recipe.yaml").write_bytes(b"name: tiny\n# caf\xe9\n")
    with untouched(run_copy):
        code, err = cli(["report", run_copy], capsys)
    assert_one_error_line(code, err, "recipe.yaml is not UTF-8 text", "byte 0xe9", expected=1)
    assert not (run_copy / "report.html").exists()


def test_non_utf8_metrics_csv_is_one_line_for_diagnose(run_copy, capsys):
    (run_copy / "metrics.csv").write_bytes((run_copy / "metrics.csv").read_bytes() + b"\xff\xfe,1\n")
    with untouched(run_copy):
        code, err = cli(["diagnose", run_copy], capsys)
    assert_one_error_line(code, err, "metrics.csv is not UTF-8 text", expected=1)


REPRODUCE_DAMAGE = {
    "provenance_not_json": ("provenance.json", b'{"versions": {"torch": ', ["provenance.json is not readable JSON"]),
    "provenance_a_list": ("provenance.json", b"[1, 2]", ["holds a JSON list, not an object"]),
    "provenance_wrong_section": ("provenance.json", b'{"versions": "2.5", "data": {}}', ["'versions' is a str"]),
    "provenance_null_section": ("provenance.json", b'{"versions": null, "data": {}}', ["'versions' is a NoneType"]),
    "provenance_not_utf8": ("provenance.json", b'{"python": "\xff"}', ["provenance.json is not readable JSON"]),
    "metrics_json_damaged": ("metrics.json", b'{"val_acc": 0.9', ["metrics.json is not readable JSON"]),
}


@pytest.mark.parametrize("case", sorted(REPRODUCE_DAMAGE))
def test_reproduce_with_a_damaged_record_is_refused_before_training(case, run_copy, tmp_path, capsys):
    name, data, needles = REPRODUCE_DAMAGE[case]
    (run_copy / name).write_bytes(data)
    started = time.monotonic()
    with untouched(run_copy):
        code, err = cli(["train", "--reproduce", run_copy, "--run-dir", tmp_path / "again"], capsys)
    assert_one_error_line(code, err, *needles, "remove it to reproduce without the comparison", expected=1)
    assert not (tmp_path / "again").exists() and time.monotonic() - started < 10  # nothing was trained
