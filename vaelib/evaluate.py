"""Evaluate a checkpoint on the MNIST test set: its ELBO and its importance-sampled log-likelihood.

Command line (the numbers in the README and in the shipped records come from it)::

    python -m vaelib.evaluate vaelib/pretrained/vae_latent50.pt --k 5000 --update-record

The test images are binarized once with a fixed seed (the record's training seed + 1 by
default) by :func:`vaelib.data.binarized_test_set`, and both numbers are computed on that one
binarization, so that their difference is the gap between the ELBO and the k-sample bound on the
same data. It is also the binarization behind the training record's test numbers
(:func:`vaelib.training.evaluate` with the same seed), which differ from this command's −ELBO only by
the draws of z. All numbers are nats per image (summed over pixels, averaged over the test images).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from typing import Any

import torch

from . import data as mnist_data
from ._helpers import check_positive_int, evaluating, positive_int_arg
from .bounds import elbo, log_likelihood
from .checkpoints import load_checkpoint, load_record, record_path, write_record
from .data import binarized_test_set, to_float
from .models import VAE
from .training import describe_device, pick_device, progress_bar, training_images


def test_scores(
    model: VAE,
    images: torch.Tensor,
    k: int = 5000,
    seed: int = 1,
    batch_size: int = 100,
    progress: bool = False,
) -> dict[str, Any]:
    """−ELBO (one z per image) and −log p(x) estimated with the k-sample importance-weighted bound.

    ``images`` are binarized once with ``seed`` (Bernoulli draws from the grey levels) unless the
    model has a Gaussian likelihood, in which case they are used as grey levels. Returns a dict
    with ``neg_elbo``, ``nll`` (the k-sample estimate; an upper bound on −log p(x) in
    expectation), ``gap`` (their difference) and its standard error over images, the per-image
    standard deviation of the NLL and its standard error over images, ``k``, ``images``, ``seconds``
    and ``device``.
    """
    if not isinstance(model, VAE):
        raise TypeError(f"test_scores needs a VAE, got {type(model).__name__}")
    k = check_positive_int(k, "k")
    batch_size = check_positive_int(batch_size, "batch_size")
    device = next(model.parameters()).device
    if model.likelihood == "bernoulli":
        x = binarized_test_set(images, seed).to(device)
    else:
        x = to_float(training_images(images)).to(device)
    gen = torch.Generator(device=device).manual_seed(seed + 1)
    n = x.shape[0]
    neg_elbo = torch.empty(n, dtype=torch.float64)
    nll = torch.empty(n, dtype=torch.float64)
    start = time.perf_counter()
    bar = progress_bar(math.ceil(n / batch_size), f"log-likelihood, k={k}", progress)
    try:
        with evaluating(model), torch.no_grad():  # no autograd graph: these numbers are only read
            for s in range(0, n, batch_size):
                xb = x[s : s + batch_size]
                neg_elbo[s : s + xb.shape[0]] = -elbo(model, xb, generator=gen).double().cpu()
                nll[s : s + xb.shape[0]] = -log_likelihood(model, xb, k=k, generator=gen).cpu()
                bar.update(1)
    finally:
        bar.close()
    seconds = time.perf_counter() - start
    sd = nll.std().item() if n > 1 else 0.0
    gap = neg_elbo - nll
    return {
        "k": k,
        "images": n,
        "binarization_seed": seed,
        "neg_elbo": neg_elbo.mean().item(),
        "nll": nll.mean().item(),
        "gap": gap.mean().item(),
        "gap_standard_error": gap.std().item() / math.sqrt(n) if n > 1 else 0.0,
        "nll_sd_per_image": sd,
        "nll_standard_error": sd / math.sqrt(n),
        "seconds": seconds,
        "device": describe_device(device),
    }


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m vaelib.evaluate",
        description="Test-set −ELBO and importance-sampled −log p(x) of a saved VAE (nats per image).",
    )
    p.add_argument("checkpoint", help="a .pt file written by python -m vaelib.train (with its .sha256 beside it)")
    p.add_argument("--k", type=positive_int_arg, default=5000, help="importance samples per image (default 5000)")
    p.add_argument("--seed", type=int, default=None, help="binarization seed (default: the record's seed + 1)")
    p.add_argument("--limit", type=positive_int_arg, default=None, help="use only the first N test images")
    p.add_argument("--batch-size", type=positive_int_arg, default=100, help="test images per chunk")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda")
    p.add_argument("--data-dir", default=None, help="folder with the MNIST files (default: $VAELIB_DATA or the cache)")
    p.add_argument("--update-record", action="store_true", help="store the result in the checkpoint's JSON record")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    device = pick_device(args.device)
    model = load_checkpoint(args.checkpoint, map_location=device)
    # a missing record means defaults; a corrupt one is an error (CheckpointError), not a silent default
    record = load_record(args.checkpoint) if record_path(args.checkpoint).is_file() else {}
    if args.update_record and not record:
        raise SystemExit(f"{args.checkpoint} has no JSON record to update")
    seed = args.seed if args.seed is not None else int(record.get("settings", {}).get("seed", 0)) + 1
    images, _ = mnist_data.load_mnist("test", root=args.data_dir)
    if args.limit is not None:
        images = images[: args.limit]
    result = test_scores(model, images, k=args.k, seed=seed, batch_size=args.batch_size, progress=not args.no_progress)
    result["command"] = "python -m vaelib.evaluate " + " ".join(argv)
    result["torch"] = torch.__version__
    if args.update_record:
        record["test_log_likelihood"] = result
        write_record(args.checkpoint, record)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
