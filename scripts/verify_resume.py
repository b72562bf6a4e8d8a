"""Check that kill + resume reproduces an uninterrupted run, on any recipe (the test does it on a tiny model).

    python scripts/verify_resume.py --recipe recipes/hymenoptera_finetune.yaml --set trainer.epochs=3 --kill-at 1:3

Runs the recipe three times in fresh processes: uninterrupted; killed with SIGKILL after batch B of epoch E (both
0-based), or with --signal INT interrupted there as by Ctrl-C in a terminal (SIGINT to the `tlkit train` process and
its DataLoader workers; Lightning shuts down gracefully); then `train.py --resume` on the killed run. Prints wall
times and whether metrics.csv and the final weights are identical, and writes verify_resume.json in --out.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

KILLED_RUN = """
import os, signal, sys
import lightning as L
from tlkit.recipe import load_recipe
from tlkit.run import fit

class KillAt(L.Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if (trainer.current_epoch, batch_idx) == ({epoch}, {batch}):
            os.kill(os.getpid(), signal.SIGKILL)

fit(load_recipe(sys.argv[1], sys.argv[3:]), run_dir=sys.argv[2], callbacks=[KillAt()])
"""

# Ctrl-C through the real CLI (`tlkit train`), so its message is checked too. The process runs in its own session, so
# killpg reaches exactly it and its DataLoader workers, as a terminal's Ctrl-C reaches the foreground job.
INTERRUPTED_RUN = """
import os, signal, sys
import lightning as L
import tlkit.run
from tlkit.cli.main import main

signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal (a background parent may ignore SIGINT)

class CtrlC(L.Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if (trainer.current_epoch, batch_idx) == ({epoch}, {batch}):
            os.killpg(0, signal.SIGINT)

fit = tlkit.run.fit
tlkit.run.fit = lambda recipe, **kw: fit(recipe, **{{**kw, "callbacks": [*kw.get("callbacks", []), CtrlC()]}})
sys.exit(main(["train", "--recipe", sys.argv[1], "--run-dir", sys.argv[2], *[a for o in sys.argv[3:] for a in ("--set", o)]]))
"""
EXIT_CODES = {"KILL": -signal.SIGKILL, "INT": 130}  # 130: tlkit's exit code after Ctrl-C


def _run(args: list[str]) -> tuple[int, float, str]:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, *args], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, start_new_session=True)
    return done.returncode, time.perf_counter() - started, done.stderr


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", required=True)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--kill-at", default="1:1", help="EPOCH:BATCH, 0-based (default 1:1)")
    parser.add_argument("--signal", choices=sorted(EXIT_CODES), default="KILL",
                        help="KILL (default): SIGKILL, nothing runs after it; INT: Ctrl-C through `tlkit train`")
    parser.add_argument("--out", default="runs/verify_resume")
    parser.add_argument("--whole", metavar="RUN_DIR",
                        help="compare with this finished uninterrupted run of the same recipe instead of training one")
    args = parser.parse_args(argv)
    epoch, batch = (int(x) for x in args.kill_at.split(":"))
    out = Path(args.out).resolve()
    whole = Path(args.whole).resolve() if args.whole else out / "whole"
    if not args.whole:
        shutil.rmtree(whole, ignore_errors=True)
    shutil.rmtree(out / "killed", ignore_errors=True)
    overrides = [*args.overrides, "trainer.progress_bar=false"]
    sets = [x for o in overrides for x in ("--set", o)]

    whole_s = 0.0
    if not args.whole:
        code, whole_s, err = _run(["scripts/train.py", "--recipe", args.recipe, "--run-dir", str(whole), *sets])
        if code != 0:
            print(err[-3000:], file=sys.stderr)
            return 1
    script = KILLED_RUN if args.signal == "KILL" else INTERRUPTED_RUN
    code, killed_s, kill_err = _run(["-c", script.format(epoch=epoch, batch=batch), args.recipe, str(out / "killed"),
                                     *overrides])
    if code != EXIT_CODES[args.signal]:
        print(f"the run was not killed (exit {code}); is {args.kill_at} inside the run?\n{kill_err[-3000:]}",
              file=sys.stderr)
        return 1
    from tlkit.infer.checkpoint import read_checkpoint

    after_kill = {"metrics_json": (out / "killed" / "metrics.json").exists(),
                  "checkpoint_epoch": read_checkpoint(out / "killed" / "checkpoints" / "last.ckpt")["epoch"]}
    code, resumed_s, err = _run(["scripts/train.py", "--resume", str(out / "killed"),
                                 "--set", "trainer.progress_bar=false"])
    if code != 0:
        print(err[-3000:], file=sys.stderr)
        return 1

    runs = (whole, out / "killed")
    states = [read_checkpoint(d / "checkpoints" / "last.ckpt")["state_dict"] for d in runs]
    same_weights = states[0].keys() == states[1].keys() and all(states[0][k].equal(states[1][k]) for k in states[0])
    same_csv = (whole / "metrics.csv").read_bytes() == (out / "killed" / "metrics.csv").read_bytes()
    final = [json.loads((d / "metrics.json").read_text()) for d in runs]
    report = {
        "recipe": args.recipe, "overrides": args.overrides, "kill_at": {"epoch": epoch, "batch": batch},
        "signal": args.signal, "kill_stderr_tail": kill_err.strip().splitlines()[-3:],
        "wall_s": {"uninterrupted": round(whole_s, 1), "killed": round(killed_s, 1), "resumed": round(resumed_s, 1)},
        "after_kill": after_kill,
        "resume_log": next((line for line in err.splitlines() if line.startswith("resuming")), None),
        "metrics_csv_identical": same_csv, "final_weights_identical": same_weights,
        "val_acc": [final[0]["val_acc"], final[1]["val_acc"]], "val_loss": [final[0]["val_loss"], final[1]["val_loss"]],
        "resumed_from_epoch": final[1].get("resumed_from_epoch"),
    }
    (out / "verify_resume.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"uninterrupted {whole_s:.1f} s | killed at epoch {epoch + 1} batch {batch + 1} after {killed_s:.1f} s | "
          f"resumed {resumed_s:.1f} s")
    print(f"val acc {final[0]['val_acc']:.4%} vs {final[1]['val_acc']:.4%}; val loss {final[0]['val_loss']:.6f} vs "
          f"{final[1]['val_loss']:.6f}")
    print(f"metrics.csv identical: {same_csv}; final weights identical: {same_weights}")
    return 0 if same_csv and same_weights else 1


if __name__ == "__main__":
    sys.exit(main())
