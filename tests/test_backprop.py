"""The hand-written backward pass gives autograd's gradients."""

import copy
import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from vaelib import speed
from vaelib.models import ACTIVATIONS, VAE
from vaelib.speed import TunedVAE, backprop

# the course's activations with their defaults, and some with other settings, swapped into the model
ACTIVATION_LAYERS = {**ACTIVATIONS, "softplus(beta=2.5,threshold=1.5)": lambda: nn.Softplus(beta=2.5, threshold=1.5),
                     "elu(alpha=0.4)": lambda: nn.ELU(alpha=0.4), "leaky_relu(0.3)": lambda: nn.LeakyReLU(0.3),
                     "gelu(tanh)": lambda: nn.GELU(approximate="tanh")}

SETTINGS = settings(max_examples=15, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])


def autograd_loss_and_grads(model, x, eps, beta):
    for p in model.parameters():
        p.grad = None
    rec, kl = speed.vae_loss_sums(model, x, eps)
    loss = (rec + beta * kl) / x.shape[0]
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("activation", list(ACTIVATION_LAYERS))
@SETTINGS
@given(
    norm=st.sampled_from([None, "layer"]),
    center=st.booleans(),
    likelihood=st.sampled_from(["bernoulli", "gaussian"]),
    hidden=st.lists(st.integers(1, 12), min_size=1, max_size=3),
    latent=st.integers(1, 5),
    batch=st.integers(1, 9),
    beta=st.floats(0.0, 3.0),
    seed=st.integers(0, 2**31 - 1),
)
def test_hand_written_gradients_equal_autograd(activation, norm, center, likelihood, hidden, latent, batch, beta, seed):
    torch.manual_seed(seed)
    model = TunedVAE(latent, hidden_sizes=hidden, likelihood=likelihood, sigma=0.35, input_dim=16, norm=norm,
                     center_input=center).double()
    for seq in (model.encoder, model.decoder):
        for i, mod in enumerate(seq):
            if isinstance(mod, nn.ReLU):
                seq[i] = ACTIVATION_LAYERS[activation]()
    with torch.no_grad():  # move every parameter and the input offset off their initial values (LayerNorm's 1 and 0)
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
        for b in model.buffers():
            b.copy_(torch.rand_like(b))
    x = torch.rand(batch, 16, dtype=torch.float64)
    if likelihood == "bernoulli":
        x = torch.bernoulli(x)
    eps = torch.randn(batch, latent, dtype=torch.float64)
    assert backprop.unsupported_layers(model) == []
    if norm == "layer" and seed % 3 == 0:  # LayerNorm without its shift, or with neither scale nor shift
        for seq in (model.encoder, model.decoder):
            for i, mod in enumerate(seq):
                if isinstance(mod, nn.LayerNorm):
                    affine = seed % 2 == 0
                    seq[i] = nn.LayerNorm(mod.normalized_shape, elementwise_affine=affine, bias=False).double()
                    if affine:
                        with torch.no_grad():
                            seq[i].weight.uniform_(0.5, 1.5)

    want_loss, want = autograd_loss_and_grads(model, x, eps, beta)
    for p in model.parameters():
        p.grad = None
    loss = backprop.vae_loss_and_grads(model, x, eps, beta)
    assert not loss.requires_grad
    torch.testing.assert_close(loss, want_loss, rtol=1e-12, atol=1e-12)
    for (name, p), g in zip(model.named_parameters(), want):
        assert p.grad is not None, name
        torch.testing.assert_close(p.grad, g, rtol=1e-9, atol=1e-12, msg=lambda m, name=name: f"{name}: {m}")


def test_layers_without_a_hand_written_backward_are_named_and_fall_back_to_autograd():
    model = VAE(3, hidden_sizes=(8,), input_dim=16)
    assert backprop.unsupported_layers(model) == []
    assert speed.pick_backward(model, "auto") is True
    assert speed.pick_backward(model, "autograd") is False

    model.encoder[2] = nn.ReLU(inplace=True)  # would overwrite what the backward step needs
    model.decoder.insert(1, nn.Dropout(0.1))
    assert backprop.unsupported_layers(model) == ["encoder[2] (ReLU, in place)", "decoder[1] (Dropout)"]
    assert speed.pick_backward(model, "auto") is False
    with pytest.raises(ValueError, match=r"encoder\[2\] \(ReLU, in place\), decoder\[1\] \(Dropout\)"):
        speed.pick_backward(model, "manual")
    frozen = VAE(3, hidden_sizes=(8,), input_dim=16)
    frozen.decoder[0].weight.requires_grad_(False)  # autograd gives it no gradient, so Adam leaves it alone
    assert backprop.unsupported_layers(frozen) == ["decoder.0.weight (frozen: requires_grad=False)"]
    assert speed.pick_backward(frozen, "auto") is False
    with pytest.raises(ValueError, match="backward must be one of"):
        speed.pick_backward(model, "by hand")


def test_fast_trainer_follows_the_same_trajectory_with_either_backward(mnist_small):
    train_x, _, test_x, _ = mnist_small
    runs = {}
    for how in ("manual", "autograd"):
        torch.manual_seed(0)
        model = TunedVAE(8, hidden_sizes=(64, 32), activation="gelu", norm="layer", center_input=True)
        model.init_from_data(train_x[:1000])
        runs[how] = speed.fit_fast(model, train_x[:1000], test_x[:300], epochs=3, batch_size=100, lr=3e-3, beta=0.8,
                                  seed=0, progress=False, verbose=False, backward=how)
        runs[how]["weights"] = [p.detach().clone() for p in model.parameters()]
    manual, auto = runs["manual"], runs["autograd"]
    assert manual["steps"] == auto["steps"] == [10, 20, 30]
    for key in ("train_loss", "test_loss", "test_neg_elbo", "test_kl"):
        assert manual[key] == pytest.approx(auto[key], rel=1e-5), key
    for a, b in zip(manual["weights"], auto["weights"]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert manual["test_neg_elbo"][-1] < manual["test_neg_elbo"][0] - 5  # and it trained


def flat_grads(model) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1).double() for p in model.parameters()])


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
@pytest.mark.parametrize("seed", range(4))
def test_bfloat16_products_give_float64_gradients_up_to_bfloat16_rounding(mnist_small, likelihood, seed):
    """``low=torch.bfloat16`` rounds every matrix product's inputs and outputs to 8 significant bits (a
    relative error of up to 0.4% each): the whole gradient then differs from the exact one (float64
    autograd) by about 1% of its length, and far more than float32's does, which shows that the rounding
    happens; each tensor's gradient keeps its direction."""
    train_x = mnist_small[0]
    torch.manual_seed(seed)
    model = TunedVAE(8, hidden_sizes=(96, 48), activation="gelu", norm="layer", center_input=True,
                     likelihood=likelihood, sigma=0.3)
    model.init_from_data(train_x[:1000])
    x = train_x[seed * 64:(seed + 1) * 64].reshape(64, -1).float() / 255
    if likelihood == "bernoulli":
        x = torch.bernoulli(x)
    eps = torch.randn(64, 8)

    exact = copy.deepcopy(model).double()
    autograd_loss_and_grads(exact, x.double(), eps.double(), 1.0)
    want = flat_grads(exact)
    errors = {}
    for low in (None, torch.bfloat16):
        model.zero_grad(set_to_none=True)
        loss = backprop.vae_loss_and_grads(model, x, eps, 1.0, low)
        assert loss.dtype == torch.float32 and all(p.grad.dtype == torch.float32 for p in model.parameters())
        got = flat_grads(model)
        errors[low] = float((got - want).norm() / want.norm())
        for name, p in model.named_parameters():  # every tensor keeps its direction
            g, w = p.grad.double().reshape(-1), dict(exact.named_parameters())[name].grad.reshape(-1)
            assert torch.dot(g, w) > 0.98 * g.norm() * w.norm(), (name, low)
    assert errors[None] < 1e-5, errors  # measured: 4e-7 to 6e-7
    assert 2e-3 < errors[torch.bfloat16] < 3e-2, errors  # measured: 0.9% to 1.1%


@pytest.mark.parametrize("norm", [None, "layer"])
@pytest.mark.parametrize("activation", list(ACTIVATION_LAYERS))
def test_bfloat16_written_out_pass_agrees_with_autocast(activation, norm):
    """What the written-out pass rounds is what ``torch.autocast`` rounds for these layers, for every
    activation: the two bfloat16 gradients are far closer to each other than to float32's (measured: at
    most 0.11% of the gradient's length apart, against 0.3% to 4.4% from float32; kinked activations
    such as ReLU move most, since rounding flips the sign of some inputs near 0)."""
    torch.manual_seed(0)
    model = TunedVAE(4, hidden_sizes=(64, 32), norm=norm, input_dim=100)
    for seq in (model.encoder, model.decoder):
        for i, mod in enumerate(seq):
            if isinstance(mod, nn.ReLU):
                seq[i] = ACTIVATION_LAYERS[activation]()
    x = torch.bernoulli(torch.rand(32, 100))
    eps = torch.randn(32, 4)
    grads = {}
    for how in ("fp32", "manual", "autocast"):
        model.zero_grad(set_to_none=True)
        if how == "manual":
            backprop.vae_loss_and_grads(model, x, eps, 1.0, torch.bfloat16)
        else:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=how == "autocast"):
                speed.autograd_loss_and_grads(model, x, eps, 1.0)
        grads[how] = flat_grads(model)

    def dist(a, b):
        return float((grads[a] - grads[b]).norm() / grads["fp32"].norm())

    assert dist("manual", "autocast") < min(3e-3, 0.5 * dist("autocast", "fp32")), \
        (dist("manual", "autocast"), dist("manual", "fp32"), dist("autocast", "fp32"))
    assert dist("manual", "fp32") < 0.1


def test_a_subclass_of_a_supported_activation_is_not_trusted():
    """Only the exact activation classes have a hand-written backward step: a subclass may compute something
    else (here relu(x) - 0.5, whose backward from the output y would be wrong), so it falls back to autograd."""

    class ShiftedReLU(nn.ReLU):
        def forward(self, x):
            return super().forward(x) - 0.5

    model = VAE(3, hidden_sizes=(8,), input_dim=16)
    model.encoder[1] = ShiftedReLU()
    assert backprop.unsupported_layers(model) == ["encoder[1] (ShiftedReLU)"]
    assert speed.pick_backward(model, "auto") is False


@pytest.mark.parametrize("wrap", ["parametrizations.weight_norm", "utils.weight_norm", "subclass"])
def test_a_reparametrized_or_subclassed_linear_layer_falls_back_to_autograd(wrap):
    """weight_norm keeps a layer's real parameters elsewhere (parametrizations.weight.original0/1, or
    weight_g/weight_v with the older hook-based version); the written-out pass reads .weight and would leave them
    without a gradient, so Adam would silently never train them. A subclass may compute something else."""

    class MyLinear(nn.Linear):
        pass

    torch.manual_seed(0)
    model = VAE(3, hidden_sizes=(8,), input_dim=16)
    if wrap == "subclass":
        old = model.decoder[0]
        model.decoder[0] = MyLinear(old.in_features, old.out_features)
        expected = ["decoder[0] (MyLinear)"]
    elif wrap == "utils.weight_norm":
        with warnings.catch_warnings():  # deprecated (a FutureWarning in recent torch), still in use
            warnings.simplefilter("ignore")
            model.decoder[0] = nn.utils.weight_norm(model.decoder[0])
        expected = ["decoder[0] (Linear with parameters weight_g, weight_v)"]
    else:  # this one turns the layer into a generated subclass
        model.decoder[0] = nn.utils.parametrizations.weight_norm(model.decoder[0])
        expected = ["decoder[0] (ParametrizedLinear)"]
    assert backprop.unsupported_layers(model) == expected
    assert speed.pick_backward(model, "auto") is False
    # and the fast trainer, falling back to autograd, trains every parameter of that layer
    images = torch.randint(0, 256, (64, 16), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    before = [p.detach().clone() for p in model.decoder[0].parameters()]
    speed.fit_fast(model, images, epochs=1, batch_size=32, progress=False, verbose=False)
    assert all(not torch.equal(a, b) for a, b in zip(before, model.decoder[0].parameters()))
