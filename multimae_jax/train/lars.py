"""LARS as the MAE linear-probing recipe uses it (facebookresearch/mae `util/lars.py`, from
MoCo v3), as an optax chain.

For each parameter p with gradient g, MAE's `LARS.step` does

    if p.ndim > 1:                       # not a bias or a norm scale / shift
        g = g + weight_decay * p
        q = trust_coefficient * ||p|| / ||g||   if ||p|| > 0 and ||g|| > 0, else 1
        g = q * g
    mu = momentum * mu + g               # mu starts at 0
    p = p - lr * mu

with lr read from the param group at each step (`util/lr_sched.py: adjust_learning_rate` sets
it every iteration). 1-D (and 0-D) parameters get neither weight decay nor the trust ratio.
"""
from typing import Callable, NamedTuple, Union

import jax
import jax.numpy as jnp
import optax

Schedule = Callable[[jax.Array], jax.Array]


def _matrix_mask(tree):
    """True for the parameters MAE's LARS decays and rescales: those with ndim > 1."""
    return jax.tree.map(lambda p: jnp.ndim(p) > 1, tree)


class ScaleByNegativeLrState(NamedTuple):
    count: jax.Array  # updates applied so far (int32)


def _scale_by_negative_lr(learning_rate: Union[float, Schedule]
                          ) -> optax.GradientTransformationExtraArgs:
    """updates -> -lr(t) * updates, t = the `step` passed to `update` when given (the repo's
    trainers pass the global step: train/step.py), else the number of updates applied so far."""
    def init(params):
        del params
        return ScaleByNegativeLrState(count=jnp.zeros([], jnp.int32))

    def update(updates, state, params=None, *, step=None, **extra):
        del params, extra
        t = state.count if step is None else step
        lr = learning_rate(t) if callable(learning_rate) else learning_rate
        updates = jax.tree.map(lambda u: (-lr * u).astype(u.dtype), updates)
        return updates, ScaleByNegativeLrState(count=optax.safe_increment(state.count))
    return optax.GradientTransformationExtraArgs(init, update)


def lars(learning_rate: Union[float, Schedule], momentum: float = 0.9,
         trust_coefficient: float = 0.001, weight_decay: float = 0.0
         ) -> optax.GradientTransformationExtraArgs:
    """MAE's LARS (`util/lars.py`; defaults as there and as `main_linprobe.py` builds it, with
    `weight_decay` its --weight_decay, 0 by default).

    The chain: weight decay on ndim > 1 parameters, the trust ratio on ndim > 1 parameters
    (optax's `scale_by_trust_ratio` falls back to 1 when either norm is 0, as MAE's `torch.where`
    does), the momentum trace, and *then* -lr(step).

    How it differs from `optax.lars`: optax scales by the learning rate *before* the momentum
    trace (mu = m mu + lr_t q g; p -= mu), MAE after it (mu = m mu + q g; p -= lr_t mu). With a
    constant lr the two agree; under a schedule they do not (e.g. MAE's first warm-up step, lr 0,
    still fills mu). optax.lars also decays and rescales every parameter unless given masks
    (its defaults, momentum 0.9, trust coefficient 1e-3, weight decay 0, are MAE's).

    `learning_rate` is a float or a schedule of the step: the `step` keyword of `update` when the
    caller passes one (the global step, as train/step.py does), else the count of updates applied.
    """
    return optax.chain(
        optax.masked(optax.add_decayed_weights(weight_decay), _matrix_mask),
        optax.masked(optax.scale_by_trust_ratio(trust_coefficient=trust_coefficient),
                     _matrix_mask),
        optax.trace(decay=momentum, nesterov=False),
        _scale_by_negative_lr(learning_rate))
