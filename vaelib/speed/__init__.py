"""The speed engine: the same VAE objectives as :func:`vaelib.train.fit` (ELBO, IWAE), trained with less overhead.

Nothing in the learner's core imports this subpackage; it builds on the core.

- :mod:`vaelib.speed.trainer`   :func:`fit_fast`: data on the device, no per-step synchronization
- :mod:`vaelib.speed.backprop`  the backward pass written out layer by layer (no autograd graph)
- :mod:`vaelib.speed.step`  the whole step for ``torch.compile``, Adam's update on the optimizer's state
- :mod:`vaelib.speed.hardware`  matrix-product speed, bfloat16 and TF32 settings
- :mod:`vaelib.speed.models`    the recipe's model options: LayerNorm, a centered input, a data-dependent start

``benchmarks/train_speed.py`` measures it against a tutorial loop (results in benchmarks/README.md).
"""

from .backprop import unsupported_layers, vae_loss_and_grads
from .step import (
    CompileFailed,
    adam_scalars,
    adam_states,
    adam_update_,
    batch_input,
    binarize_batch,
    compiled,
    fused_adam,
    training_step,
)
from .hardware import bf16_matmul_speedup, matmul_flops_per_s, tf32_matmuls
from .models import InputShift, TunedVAE
from .trainer import (
    BACKWARDS,
    autograd_loss_and_grads,
    check_backward,
    eval_batch_size_for,
    evaluate_frozen,
    fit_fast,
    frozen_test_draws,
    iwae_log_weights,
    iwae_loss_and_grads,
    iwae_loss_given_eps,
    pick_backward,
    vae_loss_sums,
)
