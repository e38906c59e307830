"""The speed recipe's model options (vaelib.speed.TunedVAE): LayerNorm, a centered input, a data-dependent start."""

import subprocess
import sys

import pytest
import torch

from vaelib.checkpoints import load_checkpoint, save_checkpoint
from vaelib.models import VAE, build_model
from vaelib.speed import InputShift, TunedVAE
from vaelib.speed.models import normed_mlp


def test_layer_norm_sits_after_every_hidden_linear_layer_and_survives_a_rebuild():
    model = TunedVAE(4, hidden_sizes=(32, 16), activation="gelu", norm="layer")
    assert isinstance(model, VAE)  # trained, evaluated and scored like any VAE
    kinds = [type(m).__name__ for m in model.encoder]
    assert kinds == ["Linear", "LayerNorm", "GELU", "Linear", "LayerNorm", "GELU", "Linear"]
    assert [m.normalized_shape for m in model.decoder if isinstance(m, torch.nn.LayerNorm)] == [(16,), (32,)]
    assert model.config["kind"] == "tuned_vae" and model.config["norm"] == "layer"
    assert model.config["center_input"] is False
    rebuilt = build_model(model.config)
    assert type(rebuilt) is TunedVAE and rebuilt.config == model.config
    rebuilt.load_state_dict(model.state_dict())  # strict
    x = torch.bernoulli(torch.full((3, 784), 0.3))
    torch.testing.assert_close(rebuilt.encode(x)[0], model.encode(x)[0])
    # a hidden layer's output, seen by the activation, is normalized per image
    h = model.encoder[1](model.encoder[0](x))
    torch.testing.assert_close(h.mean(-1), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(h.var(-1, unbiased=False), torch.ones(3), atol=1e-3, rtol=0)


def test_normed_mlp_is_mlp_with_a_layer_norm_before_each_hidden_activation():
    kinds = [type(m).__name__ for m in normed_mlp((10, 6, 4, 2), "tanh")]
    assert kinds == ["Linear", "LayerNorm", "Tanh", "Linear", "LayerNorm", "Tanh", "Linear"]
    assert [type(m).__name__ for m in normed_mlp((10, 2), "tanh")] == ["Linear"]


def test_a_tuned_config_always_names_its_options_and_without_them_builds_the_plain_layers():
    tuned = TunedVAE(4, hidden_sizes=(8,))
    assert tuned.config == {**VAE(4, hidden_sizes=(8,)).config, "kind": "tuned_vae", "norm": None,
                            "center_input": False}
    assert [name for name, _ in tuned.state_dict().items()][:2] == ["encoder.0.weight", "encoder.0.bias"]
    rebuilt = build_model(tuned.config)
    assert type(rebuilt) is TunedVAE and not any(isinstance(m, torch.nn.LayerNorm) for m in rebuilt.modules())
    # the same layers as the plain VAE: its weights load strictly
    rebuilt.load_state_dict(VAE(4, hidden_sizes=(8,)).state_dict())
    with pytest.raises(ValueError, match="norm"):
        TunedVAE(2, norm="batch")


def test_a_tuned_checkpoint_loads_back_as_a_tuned_vae(tmp_path):
    torch.manual_seed(0)
    images = (torch.rand(50, 784) * 255).to(torch.uint8)
    model = TunedVAE(3, hidden_sizes=(16,), norm="layer", center_input=True).init_from_data(images)
    save_checkpoint(model, tmp_path / "t.pt")
    loaded = load_checkpoint(tmp_path / "t.pt")
    assert type(loaded) is TunedVAE and loaded.config == model.config
    for a, b in zip(loaded.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)


def test_a_tuned_checkpoint_loads_in_a_fresh_interpreter_that_imported_only_vaelib(tmp_path):
    """The shipped models are TunedVAEs: `vaelib.load_pretrained` must load one without `import vaelib.speed`."""
    images = (torch.rand(50, 784) * 255).to(torch.uint8)
    save_checkpoint(TunedVAE(3, hidden_sizes=(16,), norm="layer", center_input=True).init_from_data(images),
                    tmp_path / "t.pt")
    code = f"import vaelib\nm = vaelib.load_checkpoint({str(tmp_path / 't.pt')!r})\nprint(type(m).__name__, m.config['norm'])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out == "TunedVAE layer\n", out


def test_building_a_tuned_model_without_the_speed_package_says_what_to_import():
    code = ("from vaelib.models import build_model\n"
            "try:\n"
            "    build_model({'kind': 'tuned_vae', 'latent_dim': 2})\n"
            "except ValueError as e:\n"
            "    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "unknown model kind 'tuned_vae'" in out and "import vaelib.speed" in out, out


def test_init_from_data_starts_the_decoder_at_the_mean_image():
    torch.manual_seed(0)
    images = (torch.rand(500, 28, 28) ** 3 * 255).to(torch.uint8)
    images[:, 0, 0] = 0  # a pixel that is always off: its mean is clipped at 0.001
    model = TunedVAE(3, hidden_sizes=(16,)).init_from_data(images, logvar=-3.0)
    mean = (images.reshape(-1, 784).double() / 255).mean(0).clamp(1e-3, 1 - 1e-3)
    torch.testing.assert_close(torch.sigmoid(model.decoder[-1].bias.double()), mean, atol=1e-6, rtol=0)
    assert torch.all(model.encoder[-1].bias[3:] == -3.0)
    # with the last layer's weights at zero, the decoder's mean image for any z is that mean
    with torch.no_grad():
        model.decoder[-1].weight.zero_()
    torch.testing.assert_close(model.decode_mean(torch.randn(4, 3)).double(), mean.expand(4, -1), atol=1e-6, rtol=0)
    # so the reconstruction term is the cross-entropy of the data against the mean image, which
    # is below the 784·log 2 nats of the grey-0.5 decoder a fresh model starts near
    x = torch.bernoulli((images.reshape(-1, 784).float() / 255)[:200]).double()
    nll = -model.double().log_px_given_z(x, model.decode(torch.zeros(200, 3, dtype=torch.float64)))
    torch.testing.assert_close(nll, -(x * mean.log() + (1 - x) * (1 - mean).log()).sum(-1))
    fresh = VAE(3, hidden_sizes=(16,)).double()
    assert nll.mean() < -fresh.log_px_given_z(x, fresh.decode(torch.zeros(200, 3, dtype=torch.float64))).mean() - 50
    # floats in [0, 1] give the same start as the uint8 grey levels
    again = TunedVAE(3, hidden_sizes=(16,)).init_output_bias(images.float() / 255)
    torch.testing.assert_close(again.decoder[-1].bias.double(), torch.logit(mean), atol=1e-4, rtol=0)


def test_a_centered_encoder_sees_the_image_minus_the_mean_and_could_absorb_it_in_its_bias():
    torch.manual_seed(0)
    images = (torch.rand(300, 784) ** 2 * 255).to(torch.uint8)
    model = TunedVAE(3, hidden_sizes=(16,), norm="layer", center_input=True).init_from_data(images)
    assert model.config["center_input"] is True and isinstance(model.encoder[0], InputShift)
    mean = images.double().mean(0) / 255
    torch.testing.assert_close(model.encoder[0].offset.double(), mean, atol=1e-6, rtol=0)
    # the same encoder without the shift, with the first bias moved by -W·mean, gives the same codes
    twin = TunedVAE(3, hidden_sizes=(16,), norm="layer")
    state = model.state_dict()
    enc = {f"encoder.{int(k.split('.')[1]) - 1}.{k.split('.', 2)[2]}": v for k, v in state.items()
           if k.startswith("encoder.") and not k.startswith("encoder.0.")}
    twin.load_state_dict({**{k: v for k, v in state.items() if not k.startswith("encoder.")}, **enc})
    with torch.no_grad():
        twin.encoder[0].bias -= twin.encoder[0].weight @ model.encoder[0].offset
    x = torch.bernoulli(images[:20].float() / 255)
    torch.testing.assert_close(twin.encode(x)[0], model.encode(x)[0], atol=1e-4, rtol=1e-4)
    # the offset is saved and restored with the weights
    rebuilt = build_model(model.config)
    rebuilt.load_state_dict(model.state_dict())
    torch.testing.assert_close(rebuilt.encoder[0].offset, model.encoder[0].offset)


def test_init_from_data_refuses_what_is_not_images():
    model = TunedVAE(2, hidden_sizes=(8,))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        model.init_output_bias(torch.full((5, 784), 2.0))
    with pytest.raises(ValueError, match="non-empty"):
        model.init_output_bias(torch.zeros(0, 784))
    with pytest.raises(ValueError, match="logvar"):
        model.init_from_data(torch.zeros(5, 784), logvar=float("nan"))


@pytest.mark.parametrize("options", [dict(norm="layer", center_input=True), dict(norm="layer"),
                                     dict(center_input=True), {}])
def test_a_seed_gives_the_tuned_model_the_plain_models_linear_weights(options):
    """The recipe's options add layers without weights to draw (LayerNorm starts at 1 and 0, the input shift at
    0): under one seed a TunedVAE's linear layers get the plain VAE's weights, and the global generator is left
    where the plain VAE leaves it, so runs with a seed repeat the numbers measured before the options moved into
    vaelib.speed (benchmarks/README.md)."""
    settings = dict(hidden_sizes=(32, 16), activation="gelu")
    torch.manual_seed(0)
    plain = VAE(5, **settings)
    after_plain = torch.rand(3)
    torch.manual_seed(0)
    tuned = TunedVAE(5, **settings, **options)
    after_tuned = torch.rand(3)
    linears = [[m for m in model.modules() if isinstance(m, torch.nn.Linear)] for model in (plain, tuned)]
    assert len(linears[0]) == len(linears[1]) == 6
    for a, b in zip(*linears):
        assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
    assert torch.equal(after_plain, after_tuned)
