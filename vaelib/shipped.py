"""The shipped models: load one, or train the same model from scratch (the load-or-train pattern).

Notebooks 06 to 08 call :func:`load_or_train`: it loads ``vaelib/pretrained/<name>.pt`` (sha256
checked) when it is there, and otherwise trains the model with the settings it was shipped with,
exactly as ``python -m vaelib.train`` would, keeping a model trained in full in a cache folder.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, NamedTuple

import torch

from . import checkpoints
from . import data as mnist_data
from .checkpoints import save_checkpoint
from .cli import train_with, training_record
from .models import VAE, Autoencoder
from .training import evaluate, pick_device, training_images


#: How each checkpoint shipped in ``vaelib/pretrained/`` was trained: the command line
#: ``python -m vaelib.train`` with these settings (and the defaults for the rest: batch 128,
#: learning rate 1e-3, seed 0, dynamic binarization, Bernoulli decoder). :func:`load_or_train`
#: uses them to train a model that is not shipped; when the checkpoint is there, the settings
#: stored in its JSON record take precedence.
SHIPPED_SETTINGS: dict[str, dict[str, Any]] = {
    "vae_latent2": {"hidden_sizes": (512, 512), "activation": "relu", "epochs": 150, "schedule": "cosine"},
    "vae_latent3": {"hidden_sizes": (500,), "activation": "tanh", "epochs": 250, "schedule": "cosine", "batch_size": 256,
                    "lr": 2e-3, "engine": "fast"},
    "vae_latent20": {"hidden_sizes": (512, 512), "activation": "relu", "epochs": 120, "schedule": "cosine"},
    "vae_latent50": {"hidden_sizes": (512, 512), "activation": "relu", "epochs": 150, "schedule": "cosine"},
    "autoencoder_latent20": {"hidden_sizes": (512, 512), "activation": "relu", "epochs": 30, "schedule": "constant"},
    "vae_latent20_beta4": {"hidden_sizes": (512, 512), "activation": "relu", "epochs": 30, "schedule": "constant"},
    "vae_latent20_beta0.5": {"hidden_sizes": (512, 512), "activation": "relu", "epochs": 30, "schedule": "constant"},
}

#: Settings for a model with no entry in :data:`SHIPPED_SETTINGS` (the command line's defaults).
DEFAULT_SETTINGS: dict[str, Any] = {
    "hidden_sizes": (512, 512), "activation": "relu", "likelihood": "bernoulli", "sigma": 1.0, "epochs": 10,
    "batch_size": 128, "lr": 1e-3, "schedule": "constant", "seed": 0, "binarize": "dynamic", "engine": "reference",
}


class LoadedOrTrained(NamedTuple):
    """What :func:`load_or_train` returns: the model (eval mode), its training record, and its source.

    ``source`` is ``"shipped"`` (loaded from ``vaelib/pretrained/``, checksum verified) or
    ``"trained"`` (trained just now). The record has the layout of the JSON record written by
    ``python -m vaelib.train``: ``settings``, ``model``, ``device``, ``seconds_per_epoch``,
    ``history`` (per-epoch numbers), ``final``...
    """

    model: Any
    record: dict[str, Any]
    source: str


def training_settings(latent_dim: int, kind: str = "vae", beta: float = 1.0, **overrides: Any) -> dict[str, Any]:
    """The settings that (re)train the shipped model named by ``latent_dim``, ``kind`` and ``beta``.

    Taken from the shipped checkpoint's JSON record when it is present, else from
    :data:`SHIPPED_SETTINGS`, else :data:`DEFAULT_SETTINGS`; ``overrides`` (any key of
    :data:`DEFAULT_SETTINGS`) replace them. Returns a dict with every key of
    :data:`DEFAULT_SETTINGS` plus ``latent_dim``, ``kind`` and ``beta``.
    """
    unknown = set(overrides) - set(DEFAULT_SETTINGS)
    if unknown:
        raise TypeError(f"unknown training settings {sorted(unknown)}; known: {sorted(DEFAULT_SETTINGS)}")
    name = checkpoints.pretrained_name(latent_dim, kind, beta)
    settings = {**DEFAULT_SETTINGS, **SHIPPED_SETTINGS.get(name, {})}
    path = checkpoints.pretrained_path(latent_dim, kind, beta)
    if checkpoints.record_path(path).is_file():
        record = checkpoints.load_record(path)
        model_cfg, given = record.get("model", {}), record.get("settings", {})
        for key in ("hidden_sizes", "activation", "likelihood", "sigma"):
            if key in model_cfg:
                settings[key] = model_cfg[key]
        for key in ("epochs", "batch_size", "lr", "schedule", "seed", "binarize", "engine"):
            if key in given:
                settings[key] = given[key]
        settings["schedule"] = given.get("schedule", "constant")  # records older than the schedule option
    settings.update(overrides)
    settings["hidden_sizes"] = tuple(int(h) for h in settings["hidden_sizes"])
    return {"latent_dim": int(latent_dim), "kind": kind, "beta": float(beta), **settings}


def _command_line(settings: dict[str, Any], max_steps: int | None) -> list[str]:
    """The ``python -m vaelib.train`` arguments that train the same model with the same settings."""
    s = settings
    argv = ["--latent-dim", str(s["latent_dim"]), "--epochs", str(s["epochs"])]
    if s["kind"] != "vae":
        argv += ["--model", s["kind"]]
    if tuple(s["hidden_sizes"]) == (500,) and s["activation"] == "tanh":
        argv += ["--paper"]
    else:
        argv += ["--hidden", *map(str, s["hidden_sizes"]), "--activation", s["activation"]]
    if s["likelihood"] != "bernoulli":
        argv += ["--likelihood", s["likelihood"], "--sigma", f"{s['sigma']:g}"]
    for flag, key in (("--binarize", "binarize"), ("--batch-size", "batch_size"), ("--lr", "lr"),
                      ("--schedule", "schedule"), ("--beta", "beta"), ("--seed", "seed")):
        argv += [flag, f"{s[key]:g}" if isinstance(s[key], float) else str(s[key])]
    if s["engine"] != "reference":
        argv += ["--engine", s["engine"]]
    if max_steps is not None:
        argv += ["--max-steps", str(max_steps)]
    return argv


def load_or_train(
    latent_dim: int,
    kind: str = "vae",
    beta: float = 1.0,
    *,
    retrain: bool = False,
    train=None,
    test=None,
    max_steps: int | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    verbose: bool = False,
    out: str | Path | None = None,
    cache: bool | str | Path = False,
    map_location: str | torch.device = "cpu",
    **overrides: Any,
) -> LoadedOrTrained:
    """Load a shipped checkpoint, or train the same model from scratch (the load-or-train pattern).

    Introduced in notebook 06. With ``retrain=False`` and the checkpoint
    ``vaelib/pretrained/<kind>_latent<d>[_beta<b>].pt`` present, loads it (sha256 checked) with its
    JSON training record. Otherwise trains a fresh model with :func:`training_settings` (the
    settings the shipped one was trained with, unless ``overrides`` change them), exactly as
    ``python -m vaelib.train`` would: ``torch.manual_seed(seed)``, build the model, train it.

    Args:
        latent_dim, kind, beta: name the model, as for :func:`vaelib.checkpoints.load_pretrained`.
        retrain: train even when the checkpoint is shipped.
        train, test: uint8 MNIST images (or (images, labels) pairs); loaded with
            :func:`vaelib.data.load_mnist` when None and needed.
        max_steps: stop training after this many optimizer steps (a short run; the cosine
            schedule then decays over these steps).
        device: training device, "auto"/None picks CUDA when present.
        progress, verbose: passed to :func:`fit`.
        out: if given, a trained model is saved there with its sha256 manifest and record.
        cache: a folder (``True``: ``~/.cache/vaelib/models``, or ``$VAELIB_CACHE/models``) where a
            model trained here in full (no ``max_steps``) is kept, so that a model that is not
            shipped is trained once: a later call with the same settings loads it from there
            (source ``"cached"``; sha256 checked). Not used with ``retrain=True``.
        map_location: where the returned model lives (CPU by default).
        **overrides: training settings, e.g. ``epochs=5`` or ``hidden_sizes=(64,)``.

    Returns :class:`LoadedOrTrained` ``(model, record, source)``. The record of a model trained
    here has the layout of the command line's record, plus ``initial``: the test numbers of the
    untrained model (same seed as the final ones), so a caller can check that the loss fell.
    """
    path = checkpoints.pretrained_path(latent_dim, kind, beta)
    if not retrain and path.is_file():
        model = checkpoints.load_checkpoint(path, map_location=map_location)
        return LoadedOrTrained(model, checkpoints.load_record(path), "shipped")

    s = training_settings(latent_dim, kind, beta, **overrides)
    cached = None
    if cache and max_steps is None:
        folder = Path(cache) if not isinstance(cache, bool) else model_cache_dir()
        cached = folder / path.name
        if not retrain and cached.is_file() and _same_settings(checkpoints.load_record(cached), s):
            model = checkpoints.load_checkpoint(cached, map_location=map_location)
            return LoadedOrTrained(model, checkpoints.load_record(cached), "cached")
    argv = _command_line(s, max_steps)
    if device is not None and str(device) != "auto":
        argv += ["--device", str(device)]
    if train is None:
        train = mnist_data.load_mnist("train")[0]
    if test is None:
        test = mnist_data.load_mnist("test")[0]
    train_x, test_x = training_images(train), training_images(test)
    dev = pick_device(device)
    torch.manual_seed(s["seed"])
    cls = VAE if kind == "vae" else Autoencoder
    model = cls(int(latent_dim), hidden_sizes=s["hidden_sizes"], activation=s["activation"],
                likelihood=s["likelihood"], sigma=s["sigma"])
    initial = evaluate(model, test_x, beta=s["beta"], seed=s["seed"] + 1, binarize=s["binarize"])
    wall = time.perf_counter()
    history = train_with(
        s["engine"], model, train_x, test_x, epochs=s["epochs"], batch_size=s["batch_size"], lr=s["lr"],
        beta=s["beta"], device=dev, seed=s["seed"], binarize=s["binarize"], max_steps=max_steps, progress=progress,
        schedule=s["schedule"], verbose=verbose,
    )
    wall = time.perf_counter() - wall
    argv += ["--out", str(out if out is not None else path.name)]
    record = {**training_record(argv, model, train_x, test_x, dev, history, wall), "initial": initial}
    model = model.to(map_location).eval()
    if out is not None:
        save_checkpoint(model, out, record=record)
    if cached is not None:
        save_checkpoint(model, cached, record={**record, "training_settings": _jsonable(s)})
    return LoadedOrTrained(model, record, "trained")


def model_cache_dir() -> Path:
    """Where :func:`load_or_train` keeps models it trained: ``$VAELIB_CACHE/models`` or ``~/.cache/vaelib/models``."""
    root = os.environ.get("VAELIB_CACHE")
    return (Path(root).expanduser() if root else Path.home() / ".cache" / "vaelib") / "models"


def _jsonable(settings: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()}


def _same_settings(record: dict[str, Any], settings: dict[str, Any]) -> bool:
    return record.get("training_settings") == _jsonable(settings)




class ExplorerModel(NamedTuple):
    """A model for the explorers of notebook 07: where it came from, and whether it was trained in full."""

    model: Any
    record: dict[str, Any]
    source: str  # "yours", "shipped", "cached" or "trained"
    trained_in_full: bool


def load_own_checkpoint(latent_dim: int, path: str | Path):
    """Your checkpoint of a VAE with ``latent_dim`` and a Bernoulli decoder, with its training record.

    The sha256 is checked against the manifest written beside it; each refusal names the file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"there is no file {path.resolve()} (a relative path starts in the notebook's folder)")
    model, record = checkpoints.load_checkpoint(path), checkpoints.load_record(path)
    if not isinstance(model, VAE) or model.latent_dim != latent_dim:
        raise ValueError(f"{path} holds a model of kind {model.config['kind']!r} with latent size "
                         f"{model.config['latent_dim']}; it must be a VAE with latent size {latent_dim}")
    if model.likelihood != "bernoulli":
        raise ValueError(f"{path} holds a VAE with a {model.likelihood} decoder, a model of grey levels; the explorers "
                         "feed binarized digits to a Bernoulli decoder (train without --likelihood)")
    return model, record


def _full_run(latent_dim: int, record: dict[str, Any]) -> bool:
    """A record of a run at least as long as the shipped model's, on the whole training set, with β = 1."""
    settings = record.get("settings", {})
    return (settings.get("max_steps") is None and settings.get("train_limit") is None
            and float(settings.get("beta", 1.0)) == 1.0
            and settings.get("epochs", 0) >= training_settings(latent_dim)["epochs"])


def explorer_model(latent_dim: int, checkpoint: str | Path | None = None, *, retrain: bool = False,
                   max_steps: int | None = None, train=None, test=None) -> ExplorerModel:
    """The model notebook 07 explores for ``latent_dim``: your ``checkpoint`` when given, else the shipped
    one, else one trained with the shipped settings (kept in the model cache when trained in full).

    ``trained_in_full`` says whether the checks of what a trained model has learned apply to it: true for
    the shipped and cached models, for one trained here without ``max_steps``, and for yours when its record
    shows a full run (:func:`_full_run`). A damaged file is reported with its path and what to do.
    """
    if checkpoint is not None:
        model, record = load_own_checkpoint(latent_dim, checkpoint)
        return ExplorerModel(model.eval(), record, "yours", _full_run(latent_dim, record))
    try:
        got = load_or_train(latent_dim, retrain=retrain, train=train, test=test, max_steps=max_steps, progress=True,
                            verbose=True, cache=True)
    except checkpoints.CheckpointError as e:
        path = checkpoints.pretrained_path(latent_dim)
        which = (f"the shipped checkpoint {path} (get a fresh copy of it from the project)"
                 if not retrain and path.is_file() else
                 f"the model trained here before, {model_cache_dir() / path.name} (delete it, with the files beside "
                 "it of the same name, and run again to train it anew)")
        raise checkpoints.CheckpointError(f"latent size {latent_dim}, {which}: {e}") from None
    full = got.source in ("shipped", "cached") or max_steps is None
    return ExplorerModel(got.model.eval(), got.record, got.source, full)
