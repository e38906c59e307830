"""Checkpoints: round trip, sha256 manifest, refusal of tampered or unsafe files."""

import json

import pytest
import torch

from vaelib import checkpoints
from vaelib.checkpoints import (
    CheckpointError,
    available_pretrained,
    load_checkpoint,
    load_pretrained,
    load_record,
    manifest_path,
    save_checkpoint,
    sha256_file,
)
from vaelib.models import VAE, Autoencoder


@pytest.mark.parametrize(
    "model",
    [
        VAE(3, hidden_sizes=(32, 16), activation="tanh"),
        VAE(2, hidden_sizes=(20,), likelihood="gaussian", sigma=0.3),
        Autoencoder(4, hidden_sizes=(24,)),
    ],
)
def test_round_trip_gives_identical_outputs(tmp_path, model):
    x = torch.rand(9, 784)
    path = save_checkpoint(model, tmp_path / "m.pt", record={"note": "round trip", "epochs": 3})
    loaded = load_checkpoint(path)
    assert type(loaded) is type(model) and loaded.config == model.config
    assert not loaded.training
    model.eval()
    enc_a, enc_b = model.encode(x), loaded.encode(x)
    for a, b in zip(enc_a if isinstance(enc_a, tuple) else (enc_a,), enc_b if isinstance(enc_b, tuple) else (enc_b,)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    z = torch.randn(5, model.latent_dim)
    torch.testing.assert_close(model.decode(z), loaded.decode(z), rtol=0, atol=0)
    assert load_record(path) == {"note": "round trip", "epochs": 3}
    digest, name = manifest_path(path).read_text().split()
    assert name == "m.pt" and digest == sha256_file(path)


def _saved(tmp_path):
    torch.manual_seed(0)
    return save_checkpoint(VAE(2, hidden_sizes=(16,)), tmp_path / "vae.pt")


def test_a_changed_byte_is_refused(tmp_path):
    path = _saved(tmp_path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="fails its checksum"):
        load_checkpoint(path)


def test_errors_name_the_whole_path_not_only_the_file_name(tmp_path):
    # two folders can hold a file of the same name (a shipped model and a cached one): the message says which
    path = _saved(tmp_path / "one" / "place")
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(CheckpointError) as corrupt:
        load_checkpoint(path)
    manifest_path(path).unlink()
    with pytest.raises(CheckpointError) as unverified:
        load_checkpoint(path)
    for err in (corrupt, unverified):
        assert str(path) in str(err.value), str(err.value)


def test_a_truncated_file_is_refused(tmp_path):
    path = _saved(tmp_path)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="fails its checksum"):
        load_checkpoint(path)


def test_missing_or_malformed_manifest_is_refused(tmp_path):
    path = _saved(tmp_path)
    manifest_path(path).write_text("not-a-digest  vae.pt\n")
    with pytest.raises(CheckpointError, match="malformed"):
        load_checkpoint(path)
    manifest_path(path).unlink()
    with pytest.raises(CheckpointError, match="no sha256 manifest"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "absent.pt")


class Sneaky:
    """An object that would run code when unpickled by a careless loader."""

    def __reduce__(self):
        return (print, ("this must never run",))


def test_arbitrary_pickled_objects_are_never_unpickled(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    torch.save({"format": 1, "config": {"kind": "vae", "latent_dim": 2}, "state_dict": {}, "x": Sneaky()}, path)
    manifest_path(path).write_text(f"{sha256_file(path)}  evil.pt\n")  # a matching manifest is not enough
    with pytest.raises(CheckpointError, match="could not be read"):
        load_checkpoint(path)
    assert "this must never run" not in capsys.readouterr().out


def test_a_file_that_is_not_a_checkpoint_is_refused(tmp_path):
    path = tmp_path / "plain.pt"
    torch.save({"weights": torch.zeros(3)}, path)
    manifest_path(path).write_text(f"{sha256_file(path)}  plain.pt\n")
    with pytest.raises(CheckpointError, match="not a vaelib checkpoint"):
        load_checkpoint(path)


def test_weights_that_do_not_match_the_settings_are_refused(tmp_path):
    path = tmp_path / "mismatch.pt"
    state = VAE(2, hidden_sizes=(16,)).state_dict()
    torch.save({"format": 1, "config": VAE(2, hidden_sizes=(17,)).config, "state_dict": state}, path)
    manifest_path(path).write_text(f"{sha256_file(path)}  mismatch.pt\n")
    with pytest.raises(CheckpointError, match="does not match its stored settings"):
        load_checkpoint(path)


def test_an_interrupted_save_leaves_no_file(tmp_path, monkeypatch):
    def failing_save(obj, f):
        f.write(b"partial bytes")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoints.torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(VAE(2, hidden_sizes=(8,)), tmp_path / "half.pt")
    assert list(tmp_path.iterdir()) == []


def test_load_pretrained_names_what_exists(monkeypatch, tmp_path):
    monkeypatch.setattr(checkpoints, "PRETRAINED_DIR", tmp_path)
    with pytest.raises(CheckpointError, match=r"latent_dim=7, kind=vae, beta=1\); shipped: none yet"):
        load_pretrained(7)
    torch.manual_seed(0)
    model = VAE(2, hidden_sizes=(8,))
    save_checkpoint(model, tmp_path / "vae_latent2.pt")
    save_checkpoint(VAE(2, hidden_sizes=(8,)), tmp_path / "vae_latent2_beta4.pt")
    save_checkpoint(Autoencoder(2, hidden_sizes=(8,)), tmp_path / "autoencoder_latent2.pt")
    assert available_pretrained() == [2]
    assert checkpoints.list_pretrained() == ["autoencoder_latent2", "vae_latent2", "vae_latent2_beta4"]
    with pytest.raises(CheckpointError, match="shipped: autoencoder_latent2, vae_latent2, vae_latent2_beta4"):
        load_pretrained(7)
    with pytest.raises(CheckpointError, match="vae_latent2_beta0.5"):
        load_pretrained(2, beta=0.5)
    z = torch.randn(3, 2)
    torch.testing.assert_close(load_pretrained(2).decode(z), model.decode(z), rtol=0, atol=0)
    assert isinstance(load_pretrained(2, kind="autoencoder"), Autoencoder)
    assert checkpoints.pretrained_path(2, beta=4).name == "vae_latent2_beta4.pt"


def test_every_shipped_checkpoint_passes_its_checksum_and_loads():
    for d in available_pretrained():
        model = load_pretrained(d)
        assert model.latent_dim == d
        json.dumps(load_record(checkpoints.pretrained_path(d)))


# ---------------------------------------------------------------- inputs found by the input audit
def test_a_binary_manifest_is_reported_as_malformed(tmp_path):
    path = _saved(tmp_path)
    manifest_path(path).write_bytes(b"\xff\xfe\x00garbage")  # used to raise UnicodeDecodeError
    with pytest.raises(CheckpointError, match="malformed"):
        load_checkpoint(path)


def test_a_checkpoint_without_weights_is_refused(tmp_path):
    path = tmp_path / "noweights.pt"
    torch.save({"format": checkpoints.FORMAT_VERSION, "config": VAE(2, hidden_sizes=(8,)).config}, path)
    manifest_path(path).write_text(f"{sha256_file(path)}  {path.name}\n")
    with pytest.raises(CheckpointError, match="not a vaelib checkpoint"):  # used to be a KeyError
        load_checkpoint(path)


def test_a_corrupt_record_names_the_file(tmp_path):
    path = save_checkpoint(VAE(2, hidden_sizes=(8,)), tmp_path / "m.pt", record={"epochs": 1})
    (tmp_path / "m.json").write_text('{"epochs": 1')  # cut short; used to be a bare JSONDecodeError
    with pytest.raises(CheckpointError, match=r"m\.json is corrupt"):
        load_record(path)


def test_a_save_that_cannot_complete_writes_nothing(tmp_path):
    from vaelib.errors import NonFiniteError

    model = VAE(2, hidden_sizes=(8,))
    with pytest.raises(TypeError, match="record cannot be written as JSON"):  # a tensor is not JSON
        save_checkpoint(model, tmp_path / "a.pt", record={"loss": torch.tensor(1.0)})
    with torch.no_grad():
        model.decoder[0].weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match="not all finite"):
        save_checkpoint(model, tmp_path / "b.pt", record={"loss": 1.0})
    assert list(tmp_path.iterdir()) == []  # no checkpoint without its record, no checkpoint of nan weights


def test_saved_files_get_the_usual_mode_and_leave_the_umask_alone(tmp_path):
    import os
    import stat

    old = os.umask(0o027)
    try:
        path = save_checkpoint(VAE(2, hidden_sizes=(8,)), tmp_path / "m.pt", record={"epochs": 1})
        assert os.umask(0o027) == 0o027  # saving did not change the process's umask
        for p in (path, manifest_path(path), tmp_path / "m.json"):
            assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~0o027, p.name  # not mkstemp's private 0o600
    finally:
        os.umask(old)


def test_an_upper_case_digest_in_the_manifest_is_accepted(tmp_path):
    path = _saved(tmp_path)
    manifest_path(path).write_text(f"{sha256_file(path).upper()}  vae.pt\n")
    assert load_checkpoint(path).latent_dim == 2


def test_a_manifest_for_another_file_is_refused(tmp_path):
    path = _saved(tmp_path)
    manifest_path(path).write_text(f"{sha256_file(path)}  other.pt\n")
    with pytest.raises(CheckpointError, match="malformed"):
        load_checkpoint(path)


def test_missing_weights_and_another_format_are_refused(tmp_path):
    model = VAE(2, hidden_sizes=(16,))
    state = {k: v for k, v in model.state_dict().items() if k != "decoder.0.bias"}
    for name, payload, match in [
        ("partial.pt", {"format": 1, "config": model.config, "state_dict": state}, "does not match its stored settings"),
        ("future.pt", {"format": checkpoints.FORMAT_VERSION + 1, "config": model.config,
                       "state_dict": model.state_dict()}, "not a vaelib checkpoint"),
    ]:
        path = tmp_path / name
        torch.save(payload, path)
        manifest_path(path).write_text(f"{sha256_file(path)}  {name}\n")
        with pytest.raises(CheckpointError, match=match):
            load_checkpoint(path)


def test_a_binary_record_is_reported_as_corrupt(tmp_path):
    path = save_checkpoint(VAE(2, hidden_sizes=(8,)), tmp_path / "m.pt", record={"epochs": 1})
    (tmp_path / "m.json").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(CheckpointError, match=r"m\.json is corrupt"):
        load_record(path)


def test_only_vaes_have_a_beta_in_their_pretrained_name():
    assert checkpoints.pretrained_name(2, kind="autoencoder", beta=4) == "autoencoder_latent2"
    assert checkpoints.pretrained_name(2, kind="vae", beta=4) == "vae_latent2_beta4"
