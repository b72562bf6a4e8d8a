"""TTA cost per image relative to one view, measured with the policies interleaved over several rounds.

    python scripts/bench_tta.py --checkpoint runs/<recipe>/<stamp>/checkpoints/best.ckpt \
        --data ../shared/datasets/hymenoptera/val [--images 64] [--rounds 3] [--tta none hflip ten_crop multi_scale]

evaluate.py times each policy once, one after the other, so on a shared machine a load change between policies
lands in the ratio. Here each policy is timed right after a single-view pass on the same images, in several rounds, and the ratio is the
median over rounds of those adjacent pairs.
Target: k views cost <= 1.1 k x one view (all views of a batch go through the model together).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from tlkit.data.images import collect_inputs  # noqa: E402
from tlkit.infer.checkpoint import load_checkpoint  # noqa: E402
from tlkit.infer.inference import predict_files  # noqa: E402
from tlkit.infer.tta import DEFAULT_MAX_VIEWS_PER_FORWARD, resolve_policy  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data", required=True, help="image files or folders (searched recursively)")
    parser.add_argument("--images", type=int, default=64, help="images per round, spread evenly over the files")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tta", nargs="+", default=["none", "hflip", "ten_crop", "multi_scale"])
    parser.add_argument("--max-views-per-forward", type=int, default=DEFAULT_MAX_VIEWS_PER_FORWARD)
    args = parser.parse_args()

    module = load_checkpoint(args.checkpoint)
    files, _ = collect_inputs([args.data])
    step = max(1, len(files) // args.images)
    files = files[::step][: args.images]
    policies = {name: resolve_policy(name, module.preprocessing) for name in args.tta}
    single = resolve_policy("none", module.preprocessing)

    def forward_ms(policy) -> tuple[float, float]:
        result = predict_files(module, files, policy, module.preprocessing, warmup=True, progress=False,
                               max_views_per_forward=args.max_views_per_forward)
        return result.forward_ms_per_image, result.ms_per_image

    forward: dict[str, list[float]] = {name: [] for name in policies}
    total: dict[str, list[float]] = {name: [] for name in policies}
    paired: dict[str, list[float]] = {name: [] for name in policies}
    for round_ in range(args.rounds):
        for name, policy in policies.items():
            one, _ = forward_ms(single)  # measured right before, so both see the same machine load
            ms, all_in = forward_ms(policy)
            forward[name].append(ms)
            total[name].append(all_in)
            paired[name].append(ms / one)
        print(f"round {round_ + 1}/{args.rounds} done", file=sys.stderr)

    print(f"{len(files)} images x {args.rounds} rounds, {module.hparams.backbone['name']} at {module.preprocessing.input_size} "
          f"px, at most {args.max_views_per_forward} views per forward")
    rows = [("policy", "views", "model ms/image (median; min-max)", "all-in ms/image", "cost / one view", "<= 1.1 k")]
    for name, policy in policies.items():
        ratio = statistics.median(paired[name])
        k = policy.num_views
        rows.append((
            name, str(k), f"{statistics.median(forward[name]):.1f}; {min(forward[name]):.1f}-{max(forward[name]):.1f}",
            f"{statistics.median(total[name]):.1f}", f"{ratio:.2f}", "yes" if ratio <= 1.1 * k else "NO",
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for i, row in enumerate(rows):
        print("| " + " | ".join(c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(row, widths))) + " |")
        if i == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    print("cost / one view = median over rounds of (policy time / single-view time measured just before it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
