"""The real pre-training step, read from its HLO as JAX lowers it (before XLA's optimisations;
`Lowered.compiler_ir('hlo')` printed with each op's metadata). Flax names every op by the
module path it runs in ('jit(_step)/jvp(MultiMAE)/encoder/0/attn/qkv/dot_general'; the
backward pass inside 'transpose(...)'), and ops of a called computation by their name there,
so an op's path is its callers' names joined with its own.

Checked: the matmuls' precision (the official autocast's, bf16 but the semseg decoder), and
that the step has no scatter: the token gathers' backward passes are gathers
(model.gather_grad='gather'), the class embedding's a one-hot matmul.
Each test that could pass vacuously is paired with one showing that the checker fails.
"""
import collections
import re

import jax
import jax.numpy as jnp
import pytest

from multimae_jax.models import layers
from multimae_jax.train import sharding
from multimae_jax.train.pretrain import pretrain_trainer

from train_helpers import host_batch, small_config

# bf16 matmuls, and a decoder block so that the decoders have self-attention blocks too; all
# three inputs and the four outputs rgb, depth, semseg (float32) and norm_rgb of the recipe
BF16 = {"train.compute_dtype": "bfloat16", "model.decoder_depth": 1}
INPUTS, OUTPUTS = ("rgb", "depth", "semseg"), ("rgb", "depth", "semseg", "norm_rgb")
FP32_OUTPUTS = ("semseg",)  # the recipe's train.fp32_output_adapters

Op = collections.namedtuple("Op", "opcode path operand_dtypes")

_COMPUTATION = re.compile(r"^(ENTRY )?%([\w.\-]+) .*\{$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (.+?) ([a-z][\w\-]*)\((.*)$")
_CALLED = re.compile(r"\b(?:to_apply|calls|body|condition|true_computation|false_computation)"
                     r"=%([\w.\-]+)|branch_computations=\{([^}]*)\}")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_NAME = re.compile(r"%([\w.\-]+)")


def hlo_ops(text: str) -> list[Op]:
    """Every instruction of an HLO module's text as (opcode, path, operand element types); an
    instruction of a computation called from several places is listed once per call path."""
    computations, entry = {}, None
    for line in text.splitlines():
        if m := _COMPUTATION.match(line):
            body = computations.setdefault(m.group(2), [])
            entry = m.group(2) if m.group(1) else entry
        elif m := _INSTRUCTION.match(line):
            name, type_, opcode, rest = m.groups()
            called = [c for one, group in _CALLED.findall(rest)
                      for c in ([one] if one else _NAME.findall(group))]
            op_name = _OP_NAME.search(rest)
            body.append((name, type_.split("[")[0], opcode, _NAME.findall(rest.split(")")[0]),
                         called, op_name.group(1) if op_name else ""))
    callers = collections.defaultdict(list)
    for computation, body in computations.items():
        for *_, called, op_name in body:
            for c in called:
                callers[c].append((computation, op_name))
    paths = {entry: [""]}

    def call_paths(computation):
        if computation not in paths:
            paths[computation] = [f"{p}/{name}".lstrip("/") for caller, name in callers[computation]
                                  for p in call_paths(caller)]
        return paths[computation]
    ops = []
    for computation, body in computations.items():
        dtypes = {name: dtype for name, dtype, *_ in body}
        for name, _, opcode, operands, _, op_name in body:
            ops += [Op(opcode, f"{p}/{op_name}".lstrip("/"),
                       tuple(dtypes[o] for o in operands if o in dtypes))
                    for p in call_paths(computation)]
    return ops


def step_ops(**overrides) -> list[Op]:
    """The ops of the pre-training step of small_config(**BF16, **overrides), lowered for
    abstract arguments (nothing is compiled or run)."""
    config = small_config(**BF16, **overrides)
    mesh = sharding.make_mesh({"data": 1, "fsdp": 1}, jax.devices()[:1])
    runner = pretrain_trainer(config, mesh, total_steps=10, warmup_steps=2, base_lr=1e-3)
    state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                         runner.abstract_state, runner.state_sharding)
    batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=runner.batch_sharding)
             for k, v in host_batch(config).items()}
    lowered = runner.step.lower(state, batch)
    return hlo_ops(lowered.compiler_ir("hlo").as_hlo_module().to_string())


@pytest.fixture(scope="module")
def default_ops():
    return step_ops()


@pytest.fixture(scope="module")
def scatter_ops():
    return step_ops(**{"model.gather_grad": "scatter"})


# ---- precision --------------------------------------------------------------------------------

PARTS = (("encoder",) + tuple(f"input_adapters/{t}" for t in INPUTS)
         + tuple(f"output_adapters/{t}" for t in OUTPUTS))


def part_of(path: str) -> str | None:
    """The model part ('encoder', 'input_adapters/rgb', ...) an op runs in, if any."""
    return next((p for p in PARTS if f"/{p}/" in path), None)


def matmuls(ops) -> list[Op]:
    return [op for op in ops if op.opcode in ("dot", "convolution")]


# The gradient of the semseg class-embedding lookup is a one-hot matmul into the table, in the
# table's float32 (input_adapters.ClassEmbedding), as the official fp32 lookup's scatter-add:
# not a matmul of the model.
CLASS_EMB_GRAD = "/input_adapters/semseg/class_emb/"


def precision_errors(ops) -> list[str]:
    """'path: operand dtypes' of every matmul not in bfloat16 (float32 in the fp32 decoders and
    the class embedding's gradient)."""
    want = lambda op: "f32" if (part_of(op.path) in {f"output_adapters/{t}" for t in FP32_OUTPUTS}
                                or CLASS_EMB_GRAD in op.path) else "bf16"
    return [f"{op.path}: {op.operand_dtypes}" for op in matmuls(ops)
            if set(op.operand_dtypes) != {want(op)}]


def test_every_matmul_runs_in_bf16_except_the_fp32_semseg_decoder(default_ops):
    ops = matmuls(default_ops)
    assert ops and [op.path for op in ops if part_of(op.path) is None] == []  # all attributed
    backward = lambda op: "transpose(" in op.path
    for part in PARTS:  # forward and backward matmuls of every part are among those checked
        mine = [op for op in ops if part_of(op.path) == part]
        assert any(backward(op) for op in mine) and not all(backward(op) for op in mine), part
    # every forward matmul of the encoder's and decoders' has its transposes in the backward
    module = lambda op: re.sub(r"^.*?MultiMAE\)+/", "", op.path)
    forward = collections.Counter(module(op) for op in ops if not backward(op))
    transposed = collections.Counter(module(op) for op in ops if backward(op))
    assert all(transposed[m] >= 2 * n for m, n in forward.items() if "input_adapters" not in m)
    assert precision_errors(default_ops) == []
    assert all(op.operand_dtypes == ("f32", "f32") for op in ops
               if part_of(op.path) == "output_adapters/semseg")


def test_the_precision_check_finds_a_float32_dense_in_a_block(monkeypatch):
    """Every block's fc1 built in float32 (as a Dense left without the compute dtype would
    run behind its float32 LayerNorm): the check must report the encoder's, both passes."""
    real = layers.dense
    monkeypatch.setattr(layers, "dense", lambda features, name, dtype=jnp.float32, *a, **k: real(
        features, name, jnp.float32 if name == "fc1" else dtype, *a, **k))
    errors = precision_errors(step_ops())
    fc1 = [e for e in errors if "/encoder/0/mlp/fc1/" in e]
    assert any("transpose(" not in e for e in fc1) and any("transpose(" in e for e in fc1)
    assert all("/mlp/fc1/" in e for e in errors)


# ---- token gathers ----------------------------------------------------------------------------

def token_ops(ops, opcode: str) -> list[str]:
    """Paths of the `opcode` ops of the token gathers (masking.take_tokens' scope)."""
    return [op.path for op in ops if op.opcode == opcode and "/take_tokens/" in op.path]


def test_the_token_gathers_differentiate_into_gathers(default_ops):
    assert token_ops(default_ops, "scatter") == []
    gathers = token_ops(default_ops, "gather")
    # the visible tokens, and in each decoder the restore and the context: forward + backward
    for where, uses in [(r"MultiMAE\)+/take_tokens/", 1)] + [
            (f"/output_adapters/{t}/take_tokens/", 2) for t in OUTPUTS]:
        mine = [p for p in gathers if re.search(where, p)]
        assert sum("transpose(" not in p for p in mine) == uses, where
        assert sum("transpose(" in p for p in mine) == uses, where
    # nor does anything else in the step: the semseg loss's label lookup is a one-hot product
    # (losses.py) and the class embedding's gradient a one-hot matmul (ClassEmbedding)
    assert [op.path for op in default_ops if op.opcode == "scatter"] == []
    assert sum(CLASS_EMB_GRAD in op.path and "transpose(" in op.path
               for op in matmuls(default_ops)) == 1


def test_the_scatter_check_finds_autodiff_scatters(scatter_ops):
    scatters = token_ops(scatter_ops, "scatter")
    assert all("transpose(" in p for p in scatters)
    assert sum("MultiMAE))/take_tokens/" in p for p in scatters) == 1  # the encoder's
    for t in OUTPUTS:
        assert sum(f"/output_adapters/{t}/take_tokens" in p for p in scatters) == 2, t
    # and JAX's transpose of the class-embedding lookup
    assert sum(CLASS_EMB_GRAD in op.path and "transpose(" in op.path
               for op in scatter_ops if op.opcode == "scatter") == 1
