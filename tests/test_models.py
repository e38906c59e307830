"""The VAE and the plain autoencoder: shapes, settings, input handling and the loss."""

import pytest
import torch

from vaelib.models import ACTIVATIONS, VAE, Autoencoder, build_model, flatten_images, paper_vae


def test_encode_accepts_flat_and_square_images_and_uint8():
    torch.manual_seed(0)
    model = VAE(3, hidden_sizes=(64, 32))
    x = torch.rand(5, 28, 28)
    mu_sq, lv_sq = model.encode(x)
    mu_flat, lv_flat = model.encode(x.reshape(5, 784))
    assert mu_sq.shape == lv_sq.shape == (5, 3)
    torch.testing.assert_close(mu_sq, mu_flat, rtol=0, atol=0)
    torch.testing.assert_close(lv_sq, lv_flat, rtol=0, atol=0)
    u8 = (x * 255).round().to(torch.uint8)
    torch.testing.assert_close(model.encode(u8)[0], model.encode(u8.float() / 255)[0])


@pytest.mark.parametrize("shape", [(5, 783), (5, 28, 27), (784, 3)])
def test_wrong_image_shapes_are_refused(shape):
    with pytest.raises(ValueError, match="images must have shape"):
        VAE(2).encode(torch.zeros(shape))


def test_decode_outputs_logits_or_means_and_checks_the_code_size():
    torch.manual_seed(0)
    z = torch.randn(4, 2) * 10
    bern = VAE(2, hidden_sizes=(16,))
    logits = bern.decode(z)
    assert logits.shape == (4, 784)
    torch.testing.assert_close(bern.decode_mean(z), torch.sigmoid(logits))
    gauss = VAE(2, hidden_sizes=(16,), likelihood="gaussian", sigma=0.1)
    mean = gauss.decode(z)
    assert mean.min() >= 0 and mean.max() <= 1
    torch.testing.assert_close(gauss.decode_mean(z), mean)
    with pytest.raises(ValueError, match="last dimension 2"):
        bern.decode(torch.zeros(4, 3))
    # a leading sample dimension is kept
    assert bern.decode(torch.zeros(7, 4, 2)).shape == (7, 4, 784)


def test_paper_model_is_one_hidden_layer_of_500_tanh_units():
    model = paper_vae(3)
    linears = [m for m in model.encoder if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(784, 500), (500, 6)]
    assert sum(isinstance(m, torch.nn.Tanh) for m in model.encoder) == 1
    dec = [(m.in_features, m.out_features) for m in model.decoder if isinstance(m, torch.nn.Linear)]
    assert dec == [(3, 500), (500, 784)]


@pytest.mark.parametrize("cls", [VAE, Autoencoder])
def test_config_rebuilds_the_same_architecture(cls):
    model = cls(5, hidden_sizes=(40, 30), activation="gelu", likelihood="gaussian", sigma=0.2)
    rebuilt = build_model(model.config)
    assert type(rebuilt) is cls and rebuilt.config == model.config
    rebuilt.load_state_dict(model.state_dict())  # strict: same parameter names and shapes


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(latent_dim=0), "latent_dim"),
        (dict(latent_dim=2, activation="sigmoidish"), "unknown activation"),
        (dict(latent_dim=2, likelihood="poisson"), "likelihood"),
        (dict(latent_dim=2, likelihood="gaussian", sigma=0.0), "sigma"),
        (dict(latent_dim=2, hidden_sizes=(10, 0)), "hidden_sizes"),
    ],
)
def test_bad_settings_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        VAE(**kwargs)


def test_every_activation_builds_and_trains_one_step():
    for name in ACTIVATIONS:
        torch.manual_seed(0)
        model = VAE(2, hidden_sizes=(16,), activation=name)
        x = torch.bernoulli(torch.full((8, 784), 0.2))
        loss = model.loss(x)
        loss.backward()
        grads = [p.grad for p in model.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads), name
        assert any(g.abs().sum() > 0 for g in grads), name


def test_autoencoder_loss_is_its_reconstruction_log_likelihood():
    torch.manual_seed(0)
    ae = Autoencoder(3, hidden_sizes=(16,))
    x = torch.bernoulli(torch.full((6, 784), 0.4))
    logits = ae(x)
    ref = torch.nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1).mean()
    torch.testing.assert_close(ae.loss(x), ref)
    assert ae.encode(x).shape == (6, 3)


def test_vae_samples_and_reconstructions_are_images_in_unit_interval():
    torch.manual_seed(0)
    model = VAE(2, hidden_sizes=(16,))
    s = model.sample(10, generator=torch.Generator().manual_seed(0))
    r = model.reconstruct(torch.rand(3, 28, 28))
    assert s.shape == (10, 784) and r.shape == (3, 784)
    assert 0 <= s.min() and s.max() <= 1 and 0 <= r.min() and r.max() <= 1
    s2 = model.sample(10, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(s, s2, rtol=0, atol=0)


def test_flatten_images_rejects_non_tensors():
    with pytest.raises(TypeError):
        flatten_images([[0.0] * 784])
