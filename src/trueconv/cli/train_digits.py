"""``trueconv train-digits``: train a small CNN whose convolutions are trueconv's.

The data set is scikit-learn's bundled 8x8 handwritten digits (1797 images,
shipped inside scikit-learn: no download). The same network is then built
from ``torch.nn.Conv2d`` with the same initial weights and the same batches,
and trained for comparison, so the last line compares the two per epoch.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any, Callable

DEFAULT_EPOCHS = 10
DEFAULT_BATCH_SIZE = 32
DEFAULT_LR = 5e-3


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train-digits",
        help="train a small CNN built from trueconv.torch layers on the 8x8 digits",
        description="Train a small CNN whose convolutions are trueconv.torch.Conv2d layers on "
        "scikit-learn's bundled 8x8 digits (no download) with torch.optim, then train the same "
        "network built from torch.nn.Conv2d and compare the time per epoch.",
    )
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS,
                        help=f"training epochs (default {DEFAULT_EPOCHS})")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed for the split, the initial weights and the batch order")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                        help=f"mini-batch size (default {DEFAULT_BATCH_SIZE})")
    parser.add_argument("--lr", type=float, default=DEFAULT_LR,
                        help=f"Adam learning rate (default {DEFAULT_LR})")
    parser.add_argument("--kind", choices=("correlation", "convolution"), default="correlation",
                        help="what the trueconv layers compute (default correlation, like torch)")
    parser.add_argument("--algorithm", default="auto",
                        help="trueconv algorithm for the layers and their gradients "
                        "(default auto)")
    parser.add_argument("--threads", type=int, default=1,
                        help="threads for both trueconv (BLAS) and torch (default 1: the "
                        "matrices of this small network are too small to gain from more, "
                        "and busy machines lose a lot to oversubscription)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    # Shortened runs for the test suite: train on the first LIMIT training images only.
    parser.add_argument("--limit", type=int, default=None, help=argparse.SUPPRESS)
    parser.set_defaults(func=run)


def _imports() -> tuple[Any, Any, Any]:
    try:
        import sklearn.datasets
        import torch
        import tqdm
    except ImportError as exc:
        raise ImportError(
            f"train-digits needs torch, scikit-learn and tqdm ({exc.name} is missing): "
            f"pip install 'trueconv[train]'"
        ) from exc
    return torch, sklearn.datasets, tqdm


def load_data(seed: int, limit: int | None) -> tuple[Any, Any, Any, Any]:
    """Digits as float32 ``(N, 1, 8, 8)`` in [0, 1]; a stratified 75/25 split fixed by ``seed``."""
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None]
    x_train, x_test, y_train, y_test = train_test_split(
        images, digits.target, test_size=0.25, stratify=digits.target, random_state=seed
    )
    if limit is not None:
        x_train, y_train = x_train[:limit], y_train[:limit]
    return x_train, x_test, y_train, y_test


def build_model(conv: Callable[..., Any], **conv_kwargs: Any) -> Any:
    """Two 3x3 convolutions, a 2x2 max pool and a linear classifier (about 25k weights)."""
    import torch.nn as nn

    return nn.Sequential(
        conv(1, 16, 3, padding=1, **conv_kwargs), nn.ReLU(),
        conv(16, 32, 3, padding=1, **conv_kwargs), nn.ReLU(),
        nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(32 * 4 * 4, 10),
    )


def train(model: Any, data: tuple, args: argparse.Namespace, label: str,
          tqdm: Any) -> tuple[float, float]:
    """Train with Adam; return the mean wall-clock and process-CPU seconds per epoch.

    CPU time is reported too because wall-clock time on a shared, busy machine
    measures the neighbours as much as the code.
    """
    import torch

    x_train, _, y_train, _ = data
    x, y = torch.from_numpy(x_train), torch.from_numpy(y_train).long()
    order = torch.Generator().manual_seed(args.seed)  # the same batches for both models
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    loss_fn = torch.nn.CrossEntropyLoss()
    batches = -(-len(x) // args.batch_size)
    seconds = cpu_seconds = 0.0
    with tqdm.tqdm(total=args.epochs * batches, desc=f"{label:>15}", unit="batch",
                   disable=args.no_progress, leave=False, file=sys.stderr) as bar:
        for _ in range(args.epochs):
            start, cpu_start = time.perf_counter(), time.process_time()
            model.train()
            permutation = torch.randperm(len(x), generator=order)
            for i in range(0, len(x), args.batch_size):
                index = permutation[i:i + args.batch_size]
                optimizer.zero_grad()
                loss = loss_fn(model(x[index]), y[index])
                loss.backward()
                optimizer.step()
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
            seconds += time.perf_counter() - start
            cpu_seconds += time.process_time() - cpu_start
    return seconds / args.epochs, cpu_seconds / args.epochs


def accuracy(model: Any, data: tuple) -> float:
    import torch

    _, x_test, _, y_test = data
    model.eval()
    with torch.no_grad():
        predicted = model(torch.from_numpy(x_test)).argmax(dim=1).numpy()
    return float((predicted == y_test).mean())


def run(args: argparse.Namespace) -> int:
    from .. import ALGORITHMS
    from . import CLIError

    torch, _, tqdm = _imports()
    import trueconv.torch as tct

    if args.epochs < 1:
        raise CLIError(f"--epochs must be at least 1, got {args.epochs}")
    if args.batch_size < 1:
        raise CLIError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.threads < 1:
        raise CLIError(f"--threads must be at least 1, got {args.threads}")
    if args.limit is not None and args.limit < 1:
        raise CLIError(f"--limit must be at least 1, got {args.limit}")
    if args.algorithm != "auto" and args.algorithm not in ALGORITHMS:
        names = ", ".join(("auto", *sorted(ALGORITHMS)))
        raise CLIError(f"--algorithm must be one of {names}, got {args.algorithm!r}")

    from threadpoolctl import threadpool_limits

    torch_threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        with threadpool_limits(limits=args.threads, user_api="blas"):
            return _compare(args, torch, tct, tqdm)
    finally:
        torch.set_num_threads(torch_threads)


def _compare(args: argparse.Namespace, torch: Any, tct: Any, tqdm: Any) -> int:
    """Train the trueconv model and its torch.nn.Conv2d twin from the same start; report."""
    data = load_data(args.seed, args.limit)
    torch.manual_seed(args.seed)
    ours = build_model(tct.Conv2d, kind=args.kind, algorithm=args.algorithm)
    reference = build_model(torch.nn.Conv2d)
    state = ours.state_dict()
    if args.kind == "convolution":
        # The same function as the trueconv model: torch correlates, so flip the kernels.
        state = {k: v.flip(dims=(2, 3)) if v.dim() == 4 else v for k, v in state.items()}
    reference.load_state_dict(state)

    print(f"digits: {len(data[0])} training and {len(data[1])} test images of 8x8; "
          f"{args.epochs} epochs, batch {args.batch_size}, Adam lr {args.lr}, seed {args.seed}")
    ours_seconds, ours_cpu = train(ours, data, args, "trueconv", tqdm)
    ours_accuracy = accuracy(ours, data)
    reference_seconds, reference_cpu = train(reference, data, args, "torch.nn.Conv2d", tqdm)
    print(f"torch.nn.Conv2d model: test accuracy {accuracy(reference, data):.3f}")
    print(f"process CPU time per epoch: trueconv {ours_cpu:.2f} s | torch.nn.Conv2d "
          f"{reference_cpu:.2f} s ({args.threads} thread{'s' if args.threads > 1 else ''})")
    print(f"test accuracy {ours_accuracy:.3f} | trueconv {ours_seconds:.2f} s/epoch | "
          f"torch.nn.Conv2d {reference_seconds:.2f} s/epoch")
    return 0
