"""The shipped models: load one, or train the same model from scratch (the load-or-train pattern).

Notebooks 06 to 08 call :func:`load_or_train`: it loads ``vaelib/pretrained/<name>.pt`` (sha256
checked) when it is there, and otherwise trains the model with the command it was shipped with,
exactly as ``python -m vaelib.train`` would, keeping a model trained in full in a cache folder.
``python -m vaelib.shipped`` prints the table of the shipped models, built from their records.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NamedTuple

import torch

from . import checkpoints, cli
from . import data as mnist_data
from .checkpoints import save_checkpoint
from .models import VAE
from .training import evaluate, training_images


#: The two recipes of the shipped models, as arguments of ``python -m vaelib.train``. The course's
#: modern network: 512-256 GELU units with LayerNorm, input centered on the mean training image
#: (vaelib.speed.TunedVAE), Adam at 5e-3 with betas (0.8, 0.99), warm-up then linear decay, a moving
#: average of the weights, 100 epochs. The paper's network (Kingma & Welling 2014): one hidden layer
#: of 500 tanh units, Adam at 1e-3 with a cosine decay, 200 epochs. Both: batch 128, seed 0, dynamic
#: binarization, the fast engine with bfloat16 matrix products, compiled.
MODERN = ("--hidden 512 256 --activation gelu --norm layer --center-input --init-from-data --lr 5e-3 --betas 0.8 0.99 "
          "--schedule warmup-linear --ema 0.99 --epochs 100 --engine fast --bf16 --compile")
PAPER = "--paper --epochs 200 --schedule cosine --engine fast --bf16 --compile"
#: The autoencoder: the modern network's widths, optimizer, schedule, average and budget; the fast
#: engine and the LayerNorm/centering of TunedVAE are for VAEs only, so it trains with the reference loop.
AUTOENCODER = ("--model autoencoder --hidden 512 256 --activation gelu --lr 5e-3 --betas 0.8 0.99 "
               "--schedule warmup-linear --ema 0.99 --epochs 100")

#: How each checkpoint shipped in ``vaelib/pretrained/`` was trained: its ``python -m vaelib.train``
#: arguments (less ``--out``). :func:`load_or_train` uses them to train a model that is not shipped;
#: when the checkpoint is there, the command stored in its JSON record is used instead.
SHIPPED_COMMANDS: dict[str, str] = {
    **{f"vae_latent{d}": f"--latent-dim {d} {MODERN}" for d in (2, 3, 20, 50)},
    **{f"vae_latent20_beta{b}": f"--latent-dim 20 --beta {b} {MODERN}" for b in ("0.5", "4")},
    "autoencoder_latent20": f"--latent-dim 20 {AUTOENCODER}",
    "iwae_latent50": f"--latent-dim 50 {MODERN} --objective iwae --k 5",
    **{f"paper_latent{d}": f"--latent-dim {d} {PAPER}" for d in (2, 3, 50)},
}

#: The settings :func:`training_settings` returns, with the command line's defaults (a model with no
#: entry in :data:`SHIPPED_COMMANDS` is trained with these).
DEFAULT_SETTINGS: dict[str, Any] = {
    "hidden_sizes": (512, 512), "activation": "relu", "likelihood": "bernoulli", "sigma": 1.0, "epochs": 10,
    "batch_size": 128, "lr": 1e-3, "schedule": "constant", "seed": 0, "binarize": "dynamic", "engine": "reference",
    "betas": (0.9, 0.999), "weight_decay": 0.0, "ema": None, "norm": "none", "center_input": False,
    "init_from_data": False, "bf16": False, "compile": False, "objective": "elbo", "k": 5,
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

    Taken from the command stored in the shipped checkpoint's JSON record when it is present, else
    from :data:`SHIPPED_COMMANDS`, else the command line's defaults (:data:`DEFAULT_SETTINGS`; for
    ``kind="paper"`` the paper's network, for ``kind="iwae"`` the IWAE objective); ``overrides``
    (any key of :data:`DEFAULT_SETTINGS`) replace them. Returns a dict with every key of
    :data:`DEFAULT_SETTINGS` plus ``latent_dim``, ``kind`` and ``beta``.
    """
    unknown = set(overrides) - set(DEFAULT_SETTINGS)
    if unknown:
        raise TypeError(f"unknown training settings {sorted(unknown)}; known: {sorted(DEFAULT_SETTINGS)}")
    name = checkpoints.pretrained_name(latent_dim, kind, beta)
    path = checkpoints.pretrained_path(latent_dim, kind, beta)
    if checkpoints.record_path(path).is_file():
        argv = checkpoints.load_record(path)["command"].split()[3:]  # after "python -m vaelib.train"
    else:
        argv = SHIPPED_COMMANDS.get(name, {"paper": "--paper", "iwae": "--objective iwae"}.get(kind, "")).split()
    args = vars(cli.parse_args([*argv, "--latent-dim", str(latent_dim), "--out", "unused.pt"]))
    settings = {key: args[key] for key in DEFAULT_SETTINGS if key != "hidden_sizes"}
    settings["hidden_sizes"] = args["hidden"]
    settings.update(overrides)
    settings["hidden_sizes"] = tuple(int(h) for h in settings["hidden_sizes"])
    settings["betas"] = tuple(float(b) for b in settings["betas"])
    return {"latent_dim": int(latent_dim), "kind": kind, "beta": float(beta), **settings}


def _argument(value: Any) -> str:
    if isinstance(value, float) and float(f"{value:g}") == value:
        return f"{value:g}"
    return str(value)


def _command_line(settings: dict[str, Any], max_steps: int | None) -> list[str]:
    """The ``python -m vaelib.train`` arguments that train the same model with the same settings."""
    s = settings
    model = "autoencoder" if s["kind"] == "autoencoder" else "vae"  # paper and iwae are VAEs
    argv = ["--latent-dim", str(s["latent_dim"]), "--model", model, "--beta", _argument(s["beta"])]
    for key, default in DEFAULT_SETTINGS.items():
        flag, value = "--" + ("hidden" if key == "hidden_sizes" else key).replace("_", "-"), s[key]
        if isinstance(default, bool):
            argv += [flag] if value else []
        elif isinstance(value, (tuple, list)):
            argv += [flag, *map(_argument, value)]
        elif value is not None:
            argv += [flag, _argument(value)]
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
    ``python -m vaelib.train`` would.

    Args:
        latent_dim, kind, beta: name the model, as for :func:`vaelib.checkpoints.load_pretrained`.
        retrain: train even when the checkpoint is shipped.
        train, test: uint8 MNIST images (or (images, labels) pairs); loaded with
            :func:`vaelib.data.load_mnist` when None and needed.
        max_steps: stop training after this many optimizer steps (a short run; the schedule then
            runs its course over these steps).
        device: training device, "auto"/None picks CUDA when present.
        progress, verbose: show a progress bar; print a line per epoch.
        out: if given, a trained model is saved there with its sha256 manifest and record.
        cache: a folder (``True``: ``~/.cache/vaelib/models``, or ``$VAELIB_CACHE/models``) where a
            model trained here in full (no ``max_steps``) is kept, so that a model that is not
            shipped is trained once: a later call with the same settings loads it from there
            (source ``"cached"``; sha256 checked). Not used with ``retrain=True``.
        map_location: where the returned model lives (CPU by default).
        **overrides: training settings, e.g. ``epochs=5`` or ``hidden_sizes=(64,)``.

    Returns :class:`LoadedOrTrained` ``(model, record, source)``. The record of a model trained
    here has the layout of the command line's record, plus ``initial``: the test numbers of the
    model before its first step (same seed as the final ones), so a caller can check that the loss fell.
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
    argv += ["--out", str(out if out is not None else path.name)] + ([] if progress else ["--no-progress"])
    if train is None:
        train = mnist_data.load_mnist("train")[0]
    if test is None:
        test = mnist_data.load_mnist("test")[0]
    train_x, test_x = training_images(train), training_images(test)
    args = cli.parse_args(argv)
    model = cli.initial_model(args, train_x)
    initial = evaluate(model, test_x, beta=args.beta, seed=args.seed + 1, binarize=args.binarize)
    history, dev, wall = cli.train_from_args(args, model, train_x, test_x, verbose=verbose)
    record = {**cli.training_record(argv, model, train_x, test_x, dev, history, wall), "initial": initial}
    model = model.to(map_location).eval()
    if out is not None:
        save_checkpoint(model, out, record=record)
    if cached is not None:
        save_checkpoint(model, cached, record={**record, "training_settings": _jsonable(s)})
    return LoadedOrTrained(model, record, "trained")


def _family(name: str, record: dict[str, Any]) -> str:
    kind, settings = name.split("_latent")[0], record["settings"]
    label = {"vae": "modern", "paper": "paper's", "autoencoder": "modern widths, autoencoder",
             "iwae": f"modern, IWAE k = {settings['k']}"}[kind]
    return label + (f", β = {settings['beta']:g}" if settings["beta"] != 1.0 else "")


def results_table() -> str:
    """The table of the shipped models in README.md and the model cards, built from their JSON records.

    ``python -m vaelib.shipped`` prints it; ``tests/test_pretrained.py`` checks that both documents hold it.
    """
    rows = ["| model | recipe | epochs | training, 2-core CPU | test −ELBO | test −log p(x), K = 5000 |",
            "| --- | --- | --- | --- | --- | --- |"]
    for name in SHIPPED_COMMANDS:
        path = checkpoints.PRETRAINED_DIR / f"{name}.pt"
        if not path.is_file():
            continue
        record = checkpoints.load_record(path)
        final, ll = record["final"], record.get("test_log_likelihood")
        score = f"{final['test_neg_elbo']:.2f}" if "test_neg_elbo" in final else f"({final['test_loss']:.2f}: reconstruction)"
        nll = f"{ll['nll']:.2f} ± {ll['nll_standard_error']:.2f}" if ll else ""
        rows.append(f"| `{name}` | {_family(name, record)} | {record['settings']['epochs']} | "
                    f"{record['wall_seconds'] / 60:.1f} min | {score} | {nll} |")
    return "\n".join(rows)


TABLE_START, TABLE_END = "<!-- table: python -m vaelib.shipped -->", "<!-- end of table -->"


def write_results_table(path: str | Path) -> None:
    """Put :func:`results_table` between the markers ``TABLE_START`` and ``TABLE_END`` of a Markdown file."""
    text = Path(path).read_text()
    if text.count(TABLE_START) != 1 or text.count(TABLE_END) != 1:
        raise ValueError(f"{path} must hold the lines {TABLE_START} and {TABLE_END} once each")
    head, rest = text.split(TABLE_START)
    Path(path).write_text(f"{head}{TABLE_START}\n{results_table()}\n{TABLE_END}{rest.split(TABLE_END)[1]}")


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


if __name__ == "__main__":  # python -m vaelib.shipped [FILE.md ...]: print the table, or write it into the files
    import sys

    for markdown_file in sys.argv[1:]:
        write_results_table(markdown_file)
    if len(sys.argv) == 1:
        print(results_table())
