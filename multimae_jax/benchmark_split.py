"""Where a training step's time goes: the encoder, the decoders (or fine-tuning heads), the rest
of forward + backward (input adapters, masking, losses) and the optimizer update.

Sub-programs of the real step are compiled and timed apart, on the same state, batch and
shardings as the step (`multimae_jax/benchmark.py` calls `time_split`):

* forward + backward: `jax.value_and_grad` of the objective's loss (`Trainer.loss`) on one
  micro-batch, times `train.grad_accum_steps`;
* encoder: forward + backward of the model's encoder (the module at path ('encoder',), with its
  remat, scan and attention settings) alone, with respect to its parameters and its input;
* decoders: forward + backward of every output adapter (modules under 'output_adapters') alone,
  with respect to their parameters and their floating-point inputs;

the encoder's and the decoders' inputs are those of a forward pass of the loss on the batch
(masks included). The rest is by difference: other = forward + backward - encoder - decoders;
optimizer update = step - forward + backward (AdamW, clipping, the non-finite skip and the state
bookkeeping). Differences of separately compiled programs are estimates, since XLA fuses across
the parts inside the step; for a profile of the real step run it under `jax.profiler.trace`.
"""
import statistics
import time

import jax
import jax.numpy as jnp
import flax.linen as nn


def _median_time(fn, args, repeats: int) -> float:
    """Median wall time (s) of `fn(*args)` over `repeats` calls after one warm-up call, each
    waited for."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _selected(path: tuple, part: str) -> bool:
    return path == ("encoder",) if part == "encoder" else (
        len(path) == 2 and path[0] == "output_adapters")


def _module_calls(runner, part: str, trainable, buffers, batch, key):
    """{module path: (unbound module, args, kwargs)} of the first call of each module of `part`
    ('encoder' or 'decoders') in the loss's forward pass, array arguments as computed on `batch`
    (a jitted forward that returns them)."""
    modules, statics = {}, {}

    def forward_inputs(trainable, buffers, batch, key):
        captured = {}

        def record(next_fun, args, kwargs, context):
            path = context.module.path
            if (context.method_name == "__call__" and _selected(path, part)
                    and path not in captured):
                leaves, treedef = jax.tree.flatten((args, kwargs))
                is_array = [isinstance(x, jax.Array) for x in leaves]
                captured[path] = [x for x, a in zip(leaves, is_array) if a]
                statics[path] = (treedef, [None if a else x for x, a in zip(leaves, is_array)])
                modules[path] = context.module.clone(parent=None)
            return next_fun(*args, **kwargs)

        with nn.intercept_methods(record):
            runner.loss(trainable, buffers, batch, key)
        return captured

    arrays = jax.jit(forward_inputs)(trainable, buffers, batch, key)
    calls = {}
    for path, values in arrays.items():
        treedef, leaves = statics[path]
        it = iter(values)
        args, kwargs = jax.tree.unflatten(treedef, [next(it) if x is None else x for x in leaves])
        calls[path] = (modules[path], args, kwargs)
    return calls


def _at(tree, path: tuple):
    """The subtree of `tree` at `path`, or None where there is none."""
    for name in path:
        if not isinstance(tree, dict) or name not in tree:
            return None
        tree = tree[name]
    return tree


def _part_program(runner, calls: dict):
    """(jitted forward + backward of the modules in `calls`, each on its recorded inputs, with
    respect to their parameters and floating-point array inputs; its arguments but the
    parameters and key): the differentiated arrays, the other arrays (e.g. token indices)."""
    inputs = {path: (args, kwargs) for path, (_, args, kwargs) in calls.items()}
    leaves, treedef = jax.tree.flatten(inputs)
    kinds = ["diff" if isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jnp.floating)
             else "array" if isinstance(x, jax.Array) else "static" for x in leaves]
    pick = lambda kind: [x for x, k in zip(leaves, kinds) if k == kind]

    def loss(params, buffers, diff, arrays, key):
        given = {"diff": iter(diff), "array": iter(arrays)}
        rebuilt = jax.tree.unflatten(treedef, [x if k == "static" else next(given[k])
                                               for x, k in zip(leaves, kinds)])
        total = jnp.zeros((), jnp.float32)
        with runner.on_mesh():
            for path, (module, _, _) in calls.items():
                args, kwargs = rebuilt[path]
                variables = {"params": params[path]}
                if buffers.get(path) is not None:
                    variables["buffers"] = buffers[path]
                out = module.apply(variables, *args, rngs={"dropout": key}, **kwargs)
                out = out[-1] if isinstance(out, (list, tuple)) else out  # every layer's output
                total = total + jnp.sum(out.astype(jnp.float32))
        return total

    shardings = {path: _at(runner.state_sharding["params"], path) for path in calls}
    program = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)),
                      in_shardings=(shardings, None, None, None, None))
    return program, pick("diff"), pick("array")


def time_split(runner, state, batch, step_time: float, repeats: int = 5) -> dict:
    """Seconds per step of each part (module docstring), for `runner` (a `Trainer`) on `state`
    and a device-resident `batch`, given the measured `step_time` (s) of the whole step.

    Returns {'forward_backward_s', 'encoder_s', 'decoders_s', 'other_s', 'update_s'};
    'encoder_s' / 'decoders_s' are None when the model has no such modules, 'other_s' then
    covers them."""
    accum = runner.config.train.grad_accum_steps
    micro = jax.tree.map(lambda x: x[: x.shape[0] // accum], batch)
    trainable = {k: state[k] for k in runner.trainable_keys}
    trainable_sharding = {k: runner.state_sharding[k] for k in runner.trainable_keys}
    key = jax.random.key(1)

    grad_fn = jax.jit(jax.value_and_grad(runner.loss, has_aux=True),
                      in_shardings=(trainable_sharding, runner.state_sharding["buffers"],
                                    runner.batch_sharding, None))
    fwd_bwd = accum * _median_time(grad_fn, (trainable, state["buffers"], micro, key), repeats)
    parts = {}
    for part in ("encoder", "decoders"):
        calls = _module_calls(runner, part, trainable, state["buffers"], micro, key)
        if not calls:
            parts[part] = None
            continue
        params = {path: _at(state["params"], path) for path in calls}
        buffers = {path: _at(state["buffers"], path) for path in calls}
        program, diff, arrays = _part_program(runner, calls)
        parts[part] = accum * _median_time(program, (params, buffers, diff, arrays, key),
                                           repeats)
    measured = sum(v for v in parts.values() if v is not None)
    return {"forward_backward_s": fwd_bwd, "encoder_s": parts["encoder"],
            "decoders_s": parts["decoders"], "other_s": fwd_bwd - measured,
            "update_s": step_time - fwd_bwd}
