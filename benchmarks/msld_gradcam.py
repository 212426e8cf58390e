"""Where two recipes look: Grad-CAM overlays of the same held-out MSLD photos, side by side.

Takes two recipes' models from the same fold run of ``msld_recipes.py`` (trained with
``KEEP_WEIGHTS=1`` so their ``best.pt`` is kept) and the photos that fold run held out, and draws
one row per photo: the photo, then each recipe's Grad-CAM map for the photo's *true* class, with
that recipe's probability for the true class above it. The same fold run means both models never
saw these patients, and a map for the true class shows the evidence each model found for the right
answer, whether or not it won.

    KEEP_WEIGHTS=1 python benchmarks/msld_recipes.py run --recipes default,r18_64 --repeats 1
    python benchmarks/msld_gradcam.py --recipes default,r18_64 --fold-run r0f1 \\
        --out benchmarks/msld_gradcam_r0f1.png

Also prints, per recipe, the share of each map's mass in the central half of the image (a lesion
photo is usually framed on the lesions; skin at the border is context): a number to go with the
picture, not a measure of correctness.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = (REPO / ".." / "shared" / "data" / "msld").resolve()
DEFAULT_OUT = REPO / "runs" / "msld-recipes"


def held_out_photos(records: Path, recipe: str, fold_run: str) -> tuple[list[str], list[int]]:
    """(relative paths, labels) of the photos the fold run ``rRfK`` of ``recipe`` was tested on."""
    repeat, fold = (int(x) for x in fold_run[1:].split("f"))
    for line in records.read_text().splitlines():
        rec = json.loads(line)
        if rec["recipe"] == recipe and rec["repeat"] == repeat and rec["fold"] == fold:
            return rec["paths"], rec["labels"]
    raise SystemExit(f"{records}: no record of recipe {recipe!r} fold run {fold_run}; run msld_recipes.py first")


def pick(paths: list[str], labels: list[int], count: int) -> list[int]:
    """Indices of ``count`` photos, half of each class where the fold has enough, in file order."""
    by_class = [[i for i, y in enumerate(labels) if y == c] for c in sorted(set(labels))]
    chosen: list[int] = []
    per_class = count // len(by_class)
    for members in by_class:
        chosen += members[:per_class]
    rest = [i for i in range(len(paths)) if i not in chosen]
    return sorted(chosen + rest[: count - len(chosen)])


def central_share(cam: np.ndarray) -> float:
    """Share of the map's mass inside the central half (by side) of the image."""
    h, w = cam.shape
    inner = cam[h // 4 : h - h // 4, w // 4 : w - w // 4].sum()
    return float(inner / max(cam.sum(), 1e-12))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", required=True, help="two or more recipe names, comma-separated")
    parser.add_argument("--fold-run", default="r0f1", help="rRfK: repeat R, fold K (default r0f1)")
    parser.add_argument("--photos", type=int, default=8)
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--runs", default=str(DEFAULT_OUT), help="msld_recipes.py's --out")
    parser.add_argument("--out", required=True, help="the PNG to write")
    args = parser.parse_args(argv)

    import torch
    from matplotlib.figure import Figure

    from resnexus.data.dataset import load_image
    from resnexus.engine.checkpoint import eval_preprocess, load_for_inference
    from resnexus.engine.explain import _unnormalize, default_cam_layer, grad_cam
    from resnexus.reports import save_figure

    recipes = args.recipes.split(",")
    runs = Path(args.runs)
    paths, labels = held_out_photos(runs / "results.jsonl", recipes[0], args.fold_run)
    chosen = pick(paths, labels, args.photos)
    models = []
    for name in recipes:
        run_dir = runs / "runs" / name / args.fold_run
        if not (run_dir / "checkpoints" / "best.pt").exists():
            raise SystemExit(f"{run_dir}: no checkpoints/best.pt; train it with KEEP_WEIGHTS=1")
        models.append(load_for_inference(run_dir))
    class_names = models[0][1]["class_names"]

    fig = Figure(figsize=(2.4 * (1 + len(recipes)), 2.5 * len(chosen)))
    axes = fig.subplots(len(chosen), 1 + len(recipes), squeeze=False)
    shares: dict[str, list[float]] = {name: [] for name in recipes}
    for row, i in enumerate(chosen):
        image = load_image(Path(args.data) / paths[i])
        truth = labels[i]
        axes[row, 0].imshow(image.permute(1, 2, 0).numpy())
        axes[row, 0].set_title(f"{Path(paths[i]).name}\ntrue: {class_names[truth]}", fontsize=8)
        for col, (name, (model, ckpt)) in enumerate(zip(recipes, models), start=1):
            model.eval()
            batch = eval_preprocess(ckpt)(image)[None]
            with torch.no_grad():
                prob = float(model(batch).float().softmax(1)[0, truth])
            cam = grad_cam(model, batch, torch.tensor([truth]), default_cam_layer(model))[0].numpy()
            shares[name].append(central_share(cam))
            axes[row, col].imshow(_unnormalize(batch[0], ckpt))
            axes[row, col].imshow(cam, cmap="jet", alpha=0.45, vmin=0, vmax=1)
            axes[row, col].set_title(f"{name}\np(true) = {prob:.2f}", fontsize=8)
    for ax in axes.flat:
        ax.axis("off")
    fig.tight_layout()
    save_figure(fig, Path(args.out))
    print(f"wrote {args.out}: fold run {args.fold_run}, {len(chosen)} held-out photos")
    for name in recipes:
        s = np.array(shares[name])
        print(f"  {name}: map mass in the central half {s.mean():.2f} (median {np.median(s):.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
