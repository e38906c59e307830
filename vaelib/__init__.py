"""vaelib: the helper package of the variational-autoencoder course.

Each module holds one idea of the course and says which notebook introduces it:

- :mod:`vaelib.kl`          entropies and KL divergences (notebooks 01 and 02)
- :mod:`vaelib.reparam`     sampling with the reparameterization trick, gradient estimators (04)
- :mod:`vaelib.bounds`      log-likelihoods, the ELBO and the importance-weighted bound (03, 04, 07)
- :mod:`vaelib.models`      the VAE and a plain autoencoder of the same shape (05)
- :mod:`vaelib.data`        MNIST: download with checksums, IDX parsing, binarization (05)
- :mod:`vaelib.train`       the training loop and its command line (05)
- :mod:`vaelib.checkpoints` saving and loading trained models with sha256 checks (05, 06)
- :mod:`vaelib.plotting`    saving figures, tiling digits into a grid (all notebooks)
- :mod:`vaelib.widgets`     interactive widgets (01, 06); imported on demand: ``from vaelib.widgets import ...``
"""

from . import bounds, checkpoints, data, kl, models, plotting, reparam
from .checkpoints import load_checkpoint, load_pretrained, save_checkpoint
from .data import load_mnist
from .models import VAE, Autoencoder

__all__ = [
    "bounds",
    "checkpoints",
    "data",
    "kl",
    "models",
    "plotting",
    "reparam",
    "train",
    "VAE",
    "Autoencoder",
    "load_mnist",
    "save_checkpoint",
    "load_checkpoint",
    "load_pretrained",
]

__version__ = "0.1.0"


def __getattr__(name):
    # ``vaelib.train`` is imported on first use, so that ``python -m vaelib.train`` runs the
    # module once, as __main__, instead of finding a second copy already imported.
    if name == "train":
        import importlib

        return importlib.import_module(".train", __name__)
    raise AttributeError(f"module 'vaelib' has no attribute {name!r}")
