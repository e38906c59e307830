"""Validation once, at the door: ``@checked`` functions check, their ``.unchecked`` twins do not, and a
training step through ``.unchecked`` reads no tensor value (on a GPU each read is a synchronization)."""

import pytest
import torch

from vaelib._helpers import checked
from vaelib.bounds import elbo
from vaelib.kl import kl_standard_normal
from vaelib.models import VAE, Autoencoder


class ValueReads:
    """Counts the reads of a tensor's value (``bool(t)``, ``t.item()``) while the block runs."""

    def __init__(self, monkeypatch):
        self.count = 0
        real_bool, real_item = torch.Tensor.__bool__, torch.Tensor.item

        def counted(real):
            def read(t, *args):
                self.count += 1
                return real(t, *args)
            return read

        monkeypatch.setattr(torch.Tensor, "__bool__", counted(real_bool))
        monkeypatch.setattr(torch.Tensor, "item", counted(real_item))


def test_checked_runs_the_check_and_unchecked_skips_it():
    seen = []

    def must_be_positive(x, scale=1.0):
        seen.append(x)
        if x <= 0:
            raise ValueError("x must be positive")

    @checked(must_be_positive)
    def double(x, scale=1.0):
        """Twice x."""
        return 2 * x * scale

    assert double(3) == 6 and seen == [3]
    with pytest.raises(ValueError, match="positive"):
        double(-1)
    assert double.unchecked(-1) == -2 and seen == [3, -1]
    assert double.__doc__ == "Twice x." and double.__name__ == "double"


def test_checked_methods_bind_both_ways():
    model = VAE(2, hidden_sizes=(8,))
    x = torch.rand(4, 784).round()
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    torch.testing.assert_close(model.loss(x, generator=g1), model.loss.unchecked(x, generator=g2))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        model.loss(x * 255)


@pytest.mark.parametrize("model", [VAE(3, hidden_sizes=(16,)), Autoencoder(3, hidden_sizes=(16,))])
def test_a_training_step_through_unchecked_reads_no_tensor_value(model, monkeypatch):
    x = torch.rand(8, 784).round()
    reads = ValueReads(monkeypatch)
    loss = model.loss.unchecked(x, generator=torch.Generator().manual_seed(1)) if isinstance(model, VAE) \
        else model.loss.unchecked(x)
    loss.backward()
    assert reads.count == 0


def test_a_checked_call_reads_the_input_once(monkeypatch):
    """The door: model.loss checks its images with one read of their values (no dozen checks)."""
    model = VAE(3, hidden_sizes=(16,))
    x = torch.rand(8, 784).round()
    reads = ValueReads(monkeypatch)
    model.loss(x)
    assert reads.count == 1
    reads.count = 0
    elbo(model, x)
    assert reads.count == 1


def test_raw_grey_levels_are_refused_with_advice():
    """Floats 0..255 used to be accepted and give codes around 50."""
    model = VAE(2, hidden_sizes=(8,))
    grey = torch.randint(0, 256, (5, 28, 28)).float()
    for call in (model.encode, model.reconstruct, model.loss, lambda x: elbo(model, x)):
        with pytest.raises(ValueError, match=r"\[0, 1\].*to_float"):
            call(grey)
    assert model.encode(grey.to(torch.uint8))[0].shape == (5, 2)  # uint8 grey levels are scaled to [0, 1]


def test_the_unchecked_kl_is_the_same_formula():
    mu, logvar = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    torch.testing.assert_close(kl_standard_normal(mu, logvar), kl_standard_normal.unchecked(mu, logvar), rtol=0, atol=0)
    with pytest.raises(ValueError, match="mu must be finite"):
        kl_standard_normal(torch.full((2,), float("nan")), torch.zeros(2))
