"""The VAE and the plain autoencoder: shapes, settings, input handling and the loss."""

import pytest
import torch

from vaelib.models import ACTIVATIONS, VAE, Autoencoder, InputShift, build_model, flatten_images, paper_vae


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


def test_layer_norm_sits_after_every_hidden_linear_layer_and_survives_a_rebuild():
    model = VAE(4, hidden_sizes=(32, 16), activation="gelu", norm="layer")
    kinds = [type(m).__name__ for m in model.encoder]
    assert kinds == ["Linear", "LayerNorm", "GELU", "Linear", "LayerNorm", "GELU", "Linear"]
    assert [m.normalized_shape for m in model.decoder if isinstance(m, torch.nn.LayerNorm)] == [(16,), (32,)]
    assert model.config["norm"] == "layer"
    rebuilt = build_model(model.config)
    rebuilt.load_state_dict(model.state_dict())  # strict
    x = torch.bernoulli(torch.full((3, 784), 0.3))
    torch.testing.assert_close(rebuilt.encode(x)[0], model.encode(x)[0])
    # a hidden layer's output, seen by the activation, is normalized per image
    h = model.encoder[1](model.encoder[0](x))
    torch.testing.assert_close(h.mean(-1), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(h.var(-1, unbiased=False), torch.ones(3), atol=1e-3, rtol=0)


def test_a_config_without_norm_builds_the_plain_model():
    plain = VAE(4, hidden_sizes=(8,))
    assert "norm" not in plain.config and "center_input" not in plain.config  # older configs read the same
    assert [name for name, _ in plain.state_dict().items()][:2] == ["encoder.0.weight", "encoder.0.bias"]
    assert not any(isinstance(m, torch.nn.LayerNorm) for m in build_model(plain.config).modules())
    with pytest.raises(ValueError, match="norm"):
        VAE(2, norm="batch")


def test_init_from_data_starts_the_decoder_at_the_mean_image():
    torch.manual_seed(0)
    images = (torch.rand(500, 28, 28) ** 3 * 255).to(torch.uint8)
    images[:, 0, 0] = 0  # a pixel that is always off: its mean is clipped at 0.001
    model = VAE(3, hidden_sizes=(16,)).init_from_data(images, logvar=-3.0)
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


def test_a_centered_encoder_sees_the_image_minus_the_mean_and_could_absorb_it_in_its_bias():
    torch.manual_seed(0)
    images = (torch.rand(300, 784) ** 2 * 255).to(torch.uint8)
    model = VAE(3, hidden_sizes=(16,), norm="layer", center_input=True).init_from_data(images)
    assert model.config["center_input"] is True and isinstance(model.encoder[0], InputShift)
    mean = images.double().mean(0) / 255
    torch.testing.assert_close(model.encoder[0].offset.double(), mean, atol=1e-6, rtol=0)
    # the same encoder without the shift, with the first bias moved by -W·mean, gives the same codes
    twin = VAE(3, hidden_sizes=(16,), norm="layer")
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
    model = VAE(2, hidden_sizes=(8,))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        model.init_output_bias(torch.full((5, 784), 2.0))
    with pytest.raises(ValueError, match="non-empty"):
        model.init_output_bias(torch.zeros(0, 784))
    with pytest.raises(ValueError, match="logvar"):
        model.init_from_data(torch.zeros(5, 784), logvar=float("nan"))


# ---------------------------------------------------------------- inputs found by the input audit
def test_losses_refuse_an_empty_batch():
    """A mean over no images used to return nan."""
    from vaelib.errors import ShapeError

    for model in (VAE(2, hidden_sizes=(8,)), Autoencoder(2, hidden_sizes=(8,))):
        with pytest.raises(ShapeError, match="empty batch"):
            model.loss(torch.zeros(0, 784))


def test_decode_names_bad_latent_codes():
    from vaelib.errors import NonFiniteError, ShapeError

    model = VAE(2, hidden_sizes=(8,))
    with pytest.raises(TypeError, match="float64.*float32"):  # used to be a raw matmul dtype error
        model.decode(torch.zeros(3, 2, dtype=torch.float64))
    with pytest.raises(TypeError, match="floating-point"):
        model.decode(torch.zeros(3, 2, dtype=torch.int64))
    with pytest.raises(ShapeError, match="at least 1 dimension"):  # used to be an IndexError
        model.decode(torch.tensor(0.0))
    with pytest.raises(NonFiniteError, match="latent codes z"):  # used to decode to nan images
        model.decode(torch.full((3, 2), float("nan")))


def test_encoding_refuses_nan_images():
    """encode and reconstruct used to return nan codes and images for nan pixels."""
    from vaelib.errors import NonFiniteError

    x = torch.full((3, 784), float("nan"))
    for model in (VAE(2, hidden_sizes=(8,)), Autoencoder(2, hidden_sizes=(8,))):
        with pytest.raises(NonFiniteError, match="images must be finite"):
            model.encode(x)
        with pytest.raises(NonFiniteError, match="images must be finite"):
            model.reconstruct(x)


def test_sample_and_input_dim_must_be_counts():
    model = VAE(2, hidden_sizes=(8,))
    with pytest.raises(ValueError, match="n must be >= 0"):
        model.sample(-1)
    with pytest.raises(TypeError, match="n must be an integer"):
        model.sample(2.5)
    assert model.sample(0).shape == (0, 784)
    with pytest.raises(ValueError, match="input_dim must be >= 1"):  # input_dim=0 used to build a model
        VAE(2, hidden_sizes=(8,), input_dim=0)


def test_evaluating_restores_the_mode_the_model_had():
    from vaelib.models import evaluating

    model = VAE(2, hidden_sizes=(8,))
    for was_training in (True, False):
        model.train(was_training)
        with evaluating(model):
            assert not model.training
        assert model.training is was_training


def test_vae_loss_is_the_batch_mean_with_beta_weighting_the_closed_form_kl():
    """With the same noise, loss(β₂) − loss(β₁) = (β₂ − β₁)·mean KL(q(z|x) ‖ N(0, I)), the KL taken from
    torch.distributions."""
    from torch.distributions import Normal, kl_divergence

    torch.manual_seed(0)
    model = VAE(3, hidden_sizes=(16,)).double()
    x = torch.bernoulli(torch.full((6, 784), 0.3, dtype=torch.float64))
    mu, logvar = model.encode(x)
    kl = kl_divergence(Normal(mu, torch.exp(0.5 * logvar)), Normal(0.0, 1.0)).sum(-1).mean()
    losses = {b: model.loss(x, beta=b, generator=torch.Generator().manual_seed(4)) for b in (1.0, 2.5)}
    torch.testing.assert_close(losses[2.5] - losses[1.0], 1.5 * kl, rtol=1e-9, atol=1e-9)


def test_reconstruct_decodes_the_posterior_mean_and_sample_decodes_prior_draws():
    torch.manual_seed(0)
    model = VAE(3, hidden_sizes=(16,))
    with torch.no_grad():
        model.encoder[-1].bias[3:] += 2.0  # the log-variances differ from the means
    x = torch.rand(4, 784)
    mu = model.encoder(x)[:, :3]
    torch.testing.assert_close(model.reconstruct(x), torch.sigmoid(model.decoder(mu)).detach())
    z = torch.randn(5, 3, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(model.sample(5, generator=torch.Generator().manual_seed(7)),
                               torch.sigmoid(model.decoder(z)).detach())


def test_a_config_without_a_kind_builds_a_vae():
    config = {k: v for k, v in VAE(2, hidden_sizes=(8,)).config.items() if k != "kind"}
    assert type(build_model(config)) is VAE
