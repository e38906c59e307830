"""The VAE and the plain autoencoder: shapes, settings, input handling and the loss."""

import pytest
import torch

from vaelib.models import ACTIVATIONS, VAE, Autoencoder, build_model, paper_vae


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


@pytest.mark.parametrize("cls", [VAE, Autoencoder])
def test_check_input_refuses_non_tensors_bad_shapes_nan_and_values_outside_the_unit_interval(cls):
    from vaelib.errors import NonFiniteError, VaelibInputError

    model = cls(2, hidden_sizes=(8,))
    with pytest.raises(TypeError, match="expected a torch.Tensor of images"):
        model.check_input([[0.0] * 784])
    with pytest.raises(TypeError, match="torch.Tensor"):
        model.encode([[0.0] * 784])
    with pytest.raises(ValueError, match=r"images must have shape \(N, 784\) or \(N, 28, 28\), got \(5, 783\)"):
        model.check_input(torch.zeros(5, 783))
    with pytest.raises(NonFiniteError, match="images must be finite"):
        model.check_input(torch.full((2, 784), float("nan")))
    for bad in (-0.1, 1.5):
        with pytest.raises(VaelibInputError, match=r"images must lie in \[0, 1\]"):
            model.check_input(torch.full((2, 28, 28), bad))
    # uint8 grey levels, floats in [0, 1] and (N, 28, 28) images pass, and nothing is returned
    for ok in (torch.full((2, 28, 28), 255, dtype=torch.uint8), torch.rand(3, 784), torch.rand(28, 28),
               torch.rand(4, 3, 784, dtype=torch.float64)):
        assert model.check_input(ok) is None


@pytest.mark.parametrize("cls", [VAE, Autoencoder])
def test_encode_reconstruct_and_loss_refuse_grey_levels_0_to_255_as_floats(cls):
    """Raw grey levels as floats (values up to 255) used to be fed to the network as they were; they are refused,
    with a message that points at vaelib.data.to_float (uint8 grey levels are scaled, floats must be in [0, 1])."""
    from vaelib.errors import VaelibInputError

    model = cls(2, hidden_sizes=(8,))
    grey = torch.randint(0, 256, (4, 28, 28), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    grey[0, 0, 0] = 255
    for images in (grey.float(), grey.reshape(4, 784).double()):
        for call in (model.encode, model.reconstruct, model.loss):
            with pytest.raises(VaelibInputError, match=r"must lie in \[0, 1\], got values in \[0, 255\].*"
                                                       r"vaelib\.data\.to_float"):
                call(images)
    # the same images as uint8, or scaled to [0, 1], are accepted and agree
    from vaelib.data import to_float

    torch.testing.assert_close(model.reconstruct(grey), model.reconstruct(to_float(grey)))
    assert torch.isfinite(model.loss(grey))


def test_prepare_input_flattens_and_casts_without_checking():
    model = VAE(2, hidden_sizes=(8,)).double()
    x = model.prepare_input(torch.full((3, 28, 28), 255, dtype=torch.uint8))
    assert x.shape == (3, 784) and x.dtype == torch.float64 and torch.all(x == 1.0)
    y = model.prepare_input(torch.rand(2, 5, 784))  # leading axes are kept
    assert y.shape == (2, 5, 784) and y.dtype == torch.float64
    # no checks: values outside [0, 1] and nan go through as they are (check_input is the check)
    z = model.prepare_input(torch.tensor([[float("nan"), 200.0] + [0.5] * 782]))
    assert z.shape == (1, 784) and torch.isnan(z[0, 0]) and z[0, 1] == 200.0


def test_unchecked_skips_the_input_checks():
    """``model.loss.unchecked`` (what the training loop calls once it has checked its data) runs no check:
    here the model's check refuses everything, the checked call stops and the unchecked one trains a step
    with the same loss and gradients as the checked call on the real check."""
    from vaelib.bounds import elbo
    from vaelib.kl import kl_standard_normal

    torch.manual_seed(0)
    model = VAE(2, hidden_sizes=(8,))
    x = torch.bernoulli(torch.full((6, 784), 0.3))
    want = model.loss(x, generator=torch.Generator().manual_seed(1))
    want_grads = torch.autograd.grad(want, list(model.parameters()))

    def refuse(images):
        raise AssertionError("the input was checked")

    model.check_input = refuse
    with pytest.raises(AssertionError, match="the input was checked"):
        model.loss(x)
    with pytest.raises(AssertionError, match="the input was checked"):
        elbo(model, x)
    loss = model.loss.unchecked(x, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(loss, want, rtol=0, atol=0)
    model.zero_grad()
    loss.backward()
    for p, g in zip(model.parameters(), want_grads):
        torch.testing.assert_close(p.grad, g, rtol=0, atol=0)
    assert elbo.unchecked(model, x).shape == (6,)
    del model.check_input
    # values the checks would refuse go through unchecked, e.g. a nan mean for the KL
    mu, logvar = torch.tensor([[float("nan"), 0.0]]), torch.zeros(1, 2)
    with pytest.raises(ValueError, match="mu must be finite"):
        kl_standard_normal(mu, logvar)
    assert torch.isnan(kl_standard_normal.unchecked(mu, logvar)).all()
    assert torch.isnan(model.loss.unchecked(torch.full((2, 784), float("nan"))))


def test_a_plain_config_has_no_speed_options():
    """norm, center_input and the data-dependent start belong to vaelib.speed.TunedVAE (tests/test_speed.py)."""
    plain = VAE(4, hidden_sizes=(8,))
    assert "norm" not in plain.config and "center_input" not in plain.config
    assert plain.config["kind"] == "vae"
    assert [name for name, _ in plain.state_dict().items()][:2] == ["encoder.0.weight", "encoder.0.bias"]
    assert not any(isinstance(m, torch.nn.LayerNorm) for m in build_model(plain.config).modules())
    assert not hasattr(plain, "init_from_data") and not hasattr(plain, "init_output_bias")
    with pytest.raises(TypeError, match="norm"):
        VAE(2, norm="layer")
    with pytest.raises(TypeError, match="center_input"):
        VAE(2, center_input=True)


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
    from vaelib._helpers import evaluating

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
