"""Saving and loading trained models, each checked by a sha256 manifest (notebooks 06 and 07).

A checkpoint ``NAME.pt`` holds only tensors and plain settings: ``{"format", "config",
"state_dict"}``, read back with ``torch.load(..., weights_only=True)`` so that no arbitrary
object is ever unpickled. Beside it, ``NAME.pt.sha256`` records the file's sha256 (in the
``sha256sum`` format), and ``NAME.json`` holds the optional training record. Loading refuses a
file whose sha256 differs from the manifest (tampered, truncated or half-written).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from .errors import NonFiniteError
from .models import build_model

FORMAT_VERSION = 1
PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, fails its checksum, or does not hold a model we can rebuild."""


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def manifest_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".sha256")


def record_path(path: str | os.PathLike) -> Path:
    return Path(path).with_suffix(".json")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path: Path, write) -> None:
    """Write through a temporary file in the same folder, then rename: never a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes the file private; give it the usual mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_checkpoint(model, path: str | os.PathLike, record: dict[str, Any] | None = None) -> Path:
    """Save ``model`` (its settings and ``state_dict``) to ``path`` with a sha256 manifest beside it.

    If ``record`` is given it is written as JSON to ``path`` with the suffix ``.json`` (settings,
    device, timings, per-epoch numbers). Each file is written atomically. Returns the path.

    Nothing is written when a weight is nan or infinite (:class:`~vaelib.errors.NonFiniteError`) or when the
    record cannot be written as JSON (``TypeError``), so a failed save never leaves a checkpoint
    without its record.
    """
    path = Path(path)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    for name, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise NonFiniteError(f"refusing to save a model whose weights {name!r} are not all finite (nan or inf)")
    text = None if record is None else _record_text(record)
    payload = {"format": FORMAT_VERSION, "config": model.config, "state_dict": state}
    write_atomic(path, lambda f: torch.save(payload, f))
    digest = sha256_file(path)
    write_atomic(manifest_path(path), lambda f: f.write(f"{digest}  {path.name}\n".encode()))
    if text is not None:
        write_atomic(record_path(path), lambda f: f.write(text.encode()))
    return path


def _record_text(record: dict[str, Any]) -> str:
    try:
        return json.dumps(record, indent=2, sort_keys=False) + "\n"
    except (TypeError, ValueError) as e:
        raise TypeError(f"the training record cannot be written as JSON: {e}") from e


def write_record(path: str | os.PathLike, record: dict[str, Any]) -> Path:
    """Write ``record`` as JSON beside the checkpoint ``path`` (atomically); returns the record's path."""
    text = _record_text(record)
    rpath = record_path(path)
    write_atomic(rpath, lambda f: f.write(text.encode()))
    return rpath


def read_manifest(path: str | os.PathLike) -> str:
    """The sha256 recorded for ``path`` in its manifest."""
    mpath = manifest_path(path)
    if not mpath.is_file():
        raise CheckpointError(
            f"no sha256 manifest for checkpoint {path}: expected {mpath.name} beside it; "
            "refusing to load an unverified file"
        )
    try:
        fields = mpath.read_text().split()
    except UnicodeDecodeError:
        fields = []  # binary garbage: reported as malformed below
    if len(fields) != 2 or len(fields[0]) != 64 or fields[1] != Path(path).name:
        raise CheckpointError(f"manifest {mpath} is malformed: expected one line '<sha256>  {Path(path).name}'")
    return fields[0].lower()


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu"):
    """Load a model saved by :func:`save_checkpoint`, after checking its sha256.

    Rebuilds the architecture from the stored settings, loads the weights (strictly) and returns
    the model in eval mode. Raises :class:`CheckpointError` for a missing file or manifest, a
    checksum mismatch, or contents that are not a checkpoint of this format.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    expected = read_manifest(path)
    actual = sha256_file(path)
    if actual != expected:
        raise CheckpointError(
            f"checkpoint {path} fails its checksum: sha256 {actual} but the manifest says {expected}; "
            "the file is corrupt, truncated or was changed after saving"
        )
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # the file matches its manifest but is not a loadable checkpoint
        raise CheckpointError(
            f"checkpoint {path} could not be read by torch.load with weights_only=True ({type(e).__name__}): "
            "it matches its manifest but is not a checkpoint written by vaelib"
        ) from e
    if (
        not isinstance(payload, dict)
        or payload.get("format") != FORMAT_VERSION
        or "config" not in payload
        or "state_dict" not in payload
    ):
        raise CheckpointError(f"{path} is not a vaelib checkpoint of format {FORMAT_VERSION}")
    if isinstance(payload["config"], dict) and payload["config"].get("kind") == "tuned_vae":
        from . import speed  # noqa: F401  the shipped models' network, TunedVAE, lives with the speed recipe
    try:
        model = build_model(payload["config"])
        model.load_state_dict(payload["state_dict"])
    except (TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"checkpoint {path} does not match its stored settings: {e}") from e
    return model.to(map_location).eval()


def load_record(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON training record saved beside a checkpoint."""
    rpath = record_path(path)
    if not rpath.is_file():
        raise CheckpointError(f"no training record {rpath.name} beside checkpoint {path}")
    try:
        return json.loads(rpath.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"training record {rpath} is corrupt (not valid JSON): {e}") from e


#: The families of shipped models: the course's modern VAE, the plain autoencoder, the VAE of the
#: 2014 paper (1×500 tanh) and the modern VAE trained with the IWAE objective.
KINDS = ("vae", "autoencoder", "paper", "iwae")


def pretrained_name(latent_dim: int, kind: str = "vae", beta: float = 1.0) -> str:
    """File stem of a shipped checkpoint: ``vae_latent20``, ``vae_latent20_beta4``, ``paper_latent3``..."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    suffix = "" if kind == "autoencoder" or float(beta) == 1.0 else f"_beta{float(beta):g}"
    return f"{kind}_latent{int(latent_dim)}{suffix}"


def pretrained_path(latent_dim: int, kind: str = "vae", beta: float = 1.0) -> Path:
    return PRETRAINED_DIR / f"{pretrained_name(latent_dim, kind, beta)}.pt"


def list_pretrained() -> list[str]:
    """Stems of every checkpoint shipped inside the package (VAEs, β-VAEs, autoencoders)."""
    return sorted(p.stem for p in PRETRAINED_DIR.glob("*.pt"))


def available_pretrained() -> list[int]:
    """Latent sizes of the shipped VAEs trained with β = 1."""
    sizes = []
    for stem in list_pretrained():
        suffix = stem[len("vae_latent") :] if stem.startswith("vae_latent") else ""
        if suffix.isdigit():
            sizes.append(int(suffix))
    return sorted(sizes)


def load_pretrained(latent_dim: int, kind: str = "vae", beta: float = 1.0, map_location: str | torch.device = "cpu"):
    """Load a model shipped in ``vaelib/pretrained/`` (checksum verified).

    ``load_pretrained(20)`` is the VAE with 20 latent dimensions; ``kind="autoencoder"`` gives the
    plain autoencoder of the same shape, ``beta=4`` a β-VAE, ``kind="paper"`` the 2014 paper's
    network and ``kind="iwae"`` a VAE trained with the IWAE objective, where those are shipped.
    """
    path = pretrained_path(latent_dim, kind, beta)
    if not path.is_file():
        have = list_pretrained()
        listing = ", ".join(have) if have else "none yet"
        raise CheckpointError(
            f"no pretrained model {pretrained_name(latent_dim, kind, beta)} (latent_dim={latent_dim}, kind={kind}, "
            f"beta={beta:g}); shipped: {listing}. Train one with: python -m vaelib.train --latent-dim {latent_dim} "
            "--epochs N --out PATH"
        )
    return load_checkpoint(path, map_location=map_location)
