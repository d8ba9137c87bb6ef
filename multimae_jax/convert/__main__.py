"""python -m multimae_jax.convert SRC OUT

SRC: an official MultiMAE / MultiViT or timm ViT `.pth` (or an exported .safetensors / .npz), or
a multimae_jax checkpoint folder or training workdir (its latest step). OUT: a folder (a
multimae_jax checkpoint, see `multimae_jax.checkpoint_format`) or, ending in .safetensors / .npz,
a file in the official key layout that the official PyTorch code loads with
`model.load_state_dict(...)`; with --format timm, a file in the layout of timm's
`VisionTransformer` (the rgb encoder only, as the official tools/multimae2vit_converter.py writes
it; no final norm or head, so load it with strict=False).
"""
import argparse
import sys

import jax

from multimae_jax import checkpoint_format, pretrained
from multimae_jax.convert import export, official, timm


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m multimae_jax.convert", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src")
    parser.add_argument("out")
    parser.add_argument("--format", choices=("official", "timm"), default="official",
                        help="key layout of an OUT file (default: official)")
    parser.add_argument("--num_heads", type=int, help="encoder heads (default: width / 64)")
    parser.add_argument("--decoder_num_heads", type=int, help="decoder heads (default: width / 32)")
    parser.add_argument("--patch_size", type=int, default=16)
    parser.add_argument("--emb_padding_idx", type=int, help="semseg class-embedding padding row")
    parser.add_argument("--main_tasks", nargs="+", help="tasks a ConvNeXt / DPT head reads")
    parser.add_argument("--hooks", type=int, nargs=4, help="encoder blocks a DPT head reads")
    args = parser.parse_args(argv)
    to_file = args.out.endswith((".safetensors", ".npz"))
    if args.format == "timm" and not to_file:
        parser.error("--format timm writes a file: OUT must end in .safetensors or .npz")
    overrides = {k: v for k, v in vars(args).items()
                 if k not in ("src", "out", "format") and v is not None}
    try:
        model, variables = pretrained.load_pretrained(args.src, **overrides)
        if to_file:
            state_dict = official.flax_to_official(variables)
            if args.format == "timm":
                state_dict = timm.official_to_timm(state_dict, args.src)
            export.save_state_dict(state_dict, args.out)
        else:
            checkpoint_format.save_checkpoint(model, variables, args.out)
    except (ValueError, OSError) as e:  # unreadable or mismatched weights, bad paths
        print(f"error: {e}", file=sys.stderr)
        return 2
    n = sum(v.size for v in jax.tree.leaves(variables.get("params", {})))
    print(f"{type(model).__name__}: {len(model.input_adapters)} input adapter(s) "
          f"{list(model.input_adapters)}, outputs {list(model.output_adapters or [])}, "
          f"{n:,} parameters -> {args.out}"
          + (" (timm ViT: the rgb encoder only)" if args.format == "timm" else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
