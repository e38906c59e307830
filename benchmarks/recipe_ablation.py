"""Which parts of the tuned recipe buy what: one change at a time, same budget, same seed.

    python benchmarks/recipe_ablation.py [--epochs 3] [--device cpu|cuda]

Starting from the plain recipe of ``benchmarks/train_speed.py`` (latent 50, 2 × 512 ReLU, Adam at
a constant 1e-3), each row adds one change, keeping the ones above it, and trains with the fast
trainer for the same number of epochs (batch 128, seed 0, dynamic binarization). It prints the
test −ELBO after the last step (full test set, one fixed binarization, one z per image), the
change from the row above, and the seconds the row took to train (evaluations included); the last
row is the tuned recipe. Its last two changes buy time to a target rather than nats at the end: a
narrower second hidden layer in the encoder and the decoder makes a step a fifth cheaper, and
evaluating a moving average of the weights reaches 100 nats sooner but ends where the weights end
once the learning rate has decayed to 0 (``train_speed.py`` measures both). The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from train_speed import RECIPES  # this folder's training-speed benchmark: the plain and tuned recipes

from vaelib import data as mnist_data
from vaelib.speed import TunedVAE, fit_fast
from vaelib.training import describe_device, pick_device

# (what changes, settings after the change); every row keeps the changes above it
STEPS = [
    ("plain: ReLU, Adam lr 1e-3, constant rate", {}),
    ("warmup-linear schedule", {"schedule": "warmup-linear"}),
    ("lr 3e-3", {"lr": 3e-3}),
    ("decoder output starts at the mean image", {"output_bias": True}),
    ("LayerNorm after each hidden layer", {"norm": "layer"}),
    ("encoder log-variances start at -6", {"logvar": -6.0}),
    ("GELU instead of ReLU", {"activation": "gelu"}),
    ("Adam betas (0.8, 0.99)", {"betas": (0.8, 0.99)}),
    ("encoder input centered on the mean image", {"center_input": True}),
    ("lr 5e-3", {"lr": 5e-3}),
    ("second hidden layer 256 wide", {"hidden": (512, 256)}),
    ("moving average of the weights, decay 0.99", {"ema": 0.99}),
]
PLAIN = {**RECIPES["plain"], "output_bias": False}


def settings_after(rows: int) -> dict:
    """The settings of row ``rows`` (1 = the plain recipe): PLAIN with the first ``rows`` changes applied."""
    settings = dict(PLAIN)
    for _, update in STEPS[:rows]:
        settings.update(update)
    return settings


def build(settings: dict, train_u8: torch.Tensor, seed: int) -> TunedVAE:
    """The row's model: a :class:`vaelib.speed.TunedVAE` (without its options, the plain VAE's layers and start)."""
    torch.manual_seed(seed)
    model = TunedVAE(50, hidden_sizes=settings["hidden"], activation=settings["activation"], norm=settings["norm"],
                     center_input=settings["center_input"])
    if settings["logvar"] is not None:
        model.init_from_data(train_u8, logvar=settings["logvar"])
    elif settings["output_bias"]:
        model.init_output_bias(train_u8)
    return model


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=3, help="training budget of every row")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--data-dir", default=None, help="folder with the MNIST files (default: $VAELIB_DATA or the cache)")
    args = p.parse_args(argv)
    dev = pick_device(args.device)
    train_u8, _ = mnist_data.load_mnist("train", root=args.data_dir)
    test_u8, _ = mnist_data.load_mnist("test", root=args.data_dir)
    print(f"device: {describe_device(dev)}; torch {torch.__version__}; {args.epochs} epochs per row, seed {args.seed}",
          flush=True)
    rows, previous = [], None
    for i, (change, _) in enumerate(STEPS, start=1):
        settings = settings_after(i)
        model = build(settings, train_u8, args.seed)
        start = time.perf_counter()
        h = fit_fast(model, train_u8, test_u8, epochs=args.epochs, batch_size=128, lr=settings["lr"],
                     betas=settings["betas"], schedule=settings["schedule"], ema=settings["ema"], device=dev,
                     seed=args.seed, progress=False, verbose=False)
        neg_elbo = h["test_neg_elbo"][-1]
        rows.append({"change": change, "test_neg_elbo": round(neg_elbo, 2),
                     "seconds": round(time.perf_counter() - start, 1)})
        diff = "" if previous is None else f"({neg_elbo - previous:+.2f})"
        print(f"{change:45s} test -ELBO {neg_elbo:7.2f}  {diff:8s}  {rows[-1]['seconds']:6.1f} s", flush=True)
        previous = neg_elbo
    print(json.dumps({"device": describe_device(dev), "epochs": args.epochs, "seed": args.seed, "rows": rows}))
    return rows


if __name__ == "__main__":
    main()
