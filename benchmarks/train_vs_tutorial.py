"""Training throughput: `resnexus train` versus a plain PyTorch loop written as ResNeXt tutorials do.

Both train resnext50_32x4d at 224 px, batch 16, on the same MSLD photos (a class-balanced subset).
The tutorial loop: torchvision ImageFolder, PIL transforms per sample (RandomResizedCrop,
horizontal flip, ToTensor, Normalize), a default DataLoader, torchvision's resnext50_32x4d in
fp32, SGD. resnexus: its own training function with its defaults on this machine (images decoded
once and kept as uint8, per-image crops, batched colour work, fused AdamW, the precision and
memory layout chosen for the CPU). Each side's figure is the median images/s of its epochs after
the first (resnexus decodes in the first), and the sides alternate over rounds; the ratio is of
the medians over all rounds.

Then each data path is timed alone (the loader with no model: decoding, augmentation, batching),
which bounds what any data-path work can gain: with a free data path ours would run at
1 / (our time per image - our data time per image), and the printed bound is that against the
tutorial's measured rate.

    python benchmarks/train_vs_tutorial.py [--images 64] [--rounds 2] [--epochs 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = (REPO / ".." / "shared" / "data" / "msld").resolve()


def subset_folder(data: Path, per_class: int, root: Path) -> Path:
    for class_dir in sorted(p for p in data.iterdir() if p.is_dir()):
        (root / class_dir.name).mkdir(parents=True)
        for image in sorted(class_dir.iterdir())[:per_class]:
            os.symlink(image, root / class_dir.name / image.name)
    return root


def tutorial_loader(folder: Path, size: int, batch: int) -> torch.utils.data.DataLoader:
    """ImageFolder + PIL transforms per sample + a default DataLoader, as tutorials write it."""
    import torchvision
    from torchvision import transforms

    tf = transforms.Compose(
        [
            transforms.RandomResizedCrop(size),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ]
    )
    return torch.utils.data.DataLoader(
        torchvision.datasets.ImageFolder(str(folder), transform=tf), batch_size=batch, shuffle=True
    )


def tutorial_epochs(folder: Path, epochs: int, size: int, batch: int) -> list[float]:
    """The loop as tutorials write it; images/s of each epoch."""
    import torchvision

    loader = tutorial_loader(folder, size, batch)
    model = torchvision.models.resnext50_32x4d(num_classes=len(loader.dataset.classes))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    rates = []
    for _ in range(epochs):
        start, seen = time.perf_counter(), 0
        model.train()
        for images, labels in loader:
            loss = torch.nn.functional.cross_entropy(model(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            seen += len(labels)
        rates.append(seen / (time.perf_counter() - start))
    return rates


def tutorial_data_rate(folder: Path, size: int, batch: int, epochs: int = 2) -> float:
    """Images/s of the tutorial's loader alone (PIL decode + transforms + collate)."""
    loader = tutorial_loader(folder, size, batch)
    start, seen = time.perf_counter(), 0
    for _ in range(epochs):
        for _images, labels in loader:
            seen += len(labels)
    return seen / (time.perf_counter() - start)


def resnexus_data_rate(folder: Path, size: int, batch: int, epochs: int = 2) -> float:
    """Images/s of resnexus' training data path alone, memory cache warm (as from epoch 2 on)."""
    from resnexus.data import AugmentConfig, ImageDataset, scan_folder, train_transform
    from resnexus.data.sampler import EpochBatches

    samples = scan_folder(folder)
    augment = train_transform(size, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), AugmentConfig())
    batches = EpochBatches(samples.labels, batch, seed=0)
    loader = torch.utils.data.DataLoader(
        ImageDataset(samples, augment.sample, cache_size=round(size / 0.875)), batch_sampler=batches
    )
    for _ in loader:  # fills the memory cache, as the first training epoch does
        pass
    start, seen = time.perf_counter(), 0
    for epoch in range(epochs):
        batches.set_epoch(epoch + 1)
        for images, labels, params in loader:
            augment.batch(images, params).contiguous(memory_format=torch.channels_last)
            seen += len(labels)
    return seen / (time.perf_counter() - start)


def resnexus_epochs(folder: Path, epochs: int, size: int, batch: int, out: Path) -> list[float]:
    from resnexus.engine import TrainConfig, train

    result = train(
        TrainConfig(
            data=str(folder),
            out=str(out),
            model="resnext50_32x4d",
            image_size=size,
            batch_size=batch,
            epochs=epochs,
            val_fraction=0.0,
            test_fraction=0.0,
            checkpoint_every=1e9,
            verbose=False,
        )
    )
    return [h["images_per_second"] for h in result.history]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--images", type=int, default=64, help="photos in the subset (half per class; default 64)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--epochs", type=int, default=3, help="epochs per side and round (the first is not counted)")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=16)
    args = p.parse_args()
    ours, theirs = [], []
    with tempfile.TemporaryDirectory() as tmp:
        folder = subset_folder(Path(args.data), args.images // 2, Path(tmp) / "subset")
        for r in range(args.rounds):
            ours += resnexus_epochs(folder, args.epochs, args.size, args.batch, Path(tmp) / f"run{r}")[1:]
            theirs += tutorial_epochs(folder, args.epochs, args.size, args.batch)[1:]
        data_ours = statistics.median(resnexus_data_rate(folder, args.size, args.batch) for _ in range(3))
        data_theirs = statistics.median(tutorial_data_rate(folder, args.size, args.batch) for _ in range(3))
    a, b = statistics.median(ours), statistics.median(theirs)
    compute_ours = 1 / a - 1 / data_ours  # seconds per image outside the data path
    print(
        f"resnext50_32x4d training, {args.images} MSLD photos, {args.size} px, batch {args.batch}, "
        f"{torch.get_num_threads()} threads; medians over {len(ours)} epochs a side ({args.rounds} alternating rounds)"
    )
    print(f"  tutorial loop (ImageFolder + PIL, fp32):         {b:6.2f} images/s")
    print(f"  resnexus train (its defaults on this machine):   {a:6.2f} images/s   ratio {a / b:.2f}x")
    print(
        f"  data path alone: tutorial {data_theirs:7.1f} images/s ({1000 / data_theirs:.1f} ms/image), "
        f"resnexus {data_ours:7.1f} images/s ({1000 / data_ours:.1f} ms/image)"
    )
    print(
        f"  resnexus time per image: {1000 / a:.0f} ms, of which data {1000 / data_ours:.1f} ms; with a free data path "
        f"the ratio could reach at most {1 / compute_ours / b:.2f}x"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
