"""vaelib: the helper package of the variational-autoencoder course.

One module per idea of the course, each saying which notebook introduces it. The learner's core:

- :mod:`vaelib.kl`          entropies and KL divergences (notebooks 01 and 02)
- :mod:`vaelib.reparam`     the reparameterization trick, gradient estimators (04)
- :mod:`vaelib.bounds`      log-likelihoods, the ELBO and the importance-weighted bound (03, 04, 05, 08)
- :mod:`vaelib.models`      the VAE and a plain autoencoder of the same shape (06)

Around it:

- :mod:`vaelib.data`        MNIST: download with checksums, IDX parsing, binarization (06)
- :mod:`vaelib.train`       ``fit``, the training loop (06); :mod:`vaelib.training` what both trainers share
- :mod:`vaelib.cli`         the command line ``python -m vaelib.train``
- :mod:`vaelib.shipped`     the shipped models: load one, or train it the same way (06 to 08)
- :mod:`vaelib.checkpoints` saving and loading trained models with sha256 checks (06, 07)
- :mod:`vaelib.evaluate`    importance-sampled test log-likelihoods, ``python -m vaelib.evaluate`` (08)
- :mod:`vaelib.plotting`    saving figures, tiling digits into a grid (all notebooks)
- :mod:`vaelib.errors`      the exceptions raised for bad input
- :mod:`vaelib.toy_models`  the exact toy models of notebooks 03 and 05
- :mod:`vaelib.exercises`   the checkers of the exercises the learner codes (01 to 06)
- :mod:`vaelib.checking`    helpers the notebooks check claims with: seeded draws, Monte Carlo errors (01 to 05)

Subpackages, imported on demand: :mod:`vaelib.widgets` (01, 07) and :mod:`vaelib.speed` (the fast
trainer, ``benchmarks/``).
"""

from . import bounds, checkpoints, data, errors, kl, models, plotting, reparam
from .checkpoints import load_checkpoint, load_pretrained, save_checkpoint
from .data import load_mnist
from .models import VAE, Autoencoder

__all__ = ["bounds", "checkpoints", "data", "errors", "kl", "models", "plotting", "reparam", "train", "VAE",
           "Autoencoder", "load_mnist", "save_checkpoint", "load_checkpoint", "load_pretrained"]

__version__ = "0.1.0"


def __getattr__(name):
    # vaelib.train is imported on first use, so that `python -m vaelib.train` runs the module once,
    # as __main__, instead of finding a second copy already imported.
    if name == "train":
        import importlib

        return importlib.import_module(".train", __name__)
    raise AttributeError(f"module 'vaelib' has no attribute {name!r}")
