"""``vlp fit | eval | export | embed | classify | config``: the command line."""

from __future__ import annotations

import argparse
import sys

import yaml

from vlp.checkpointing import TrainingStopped
from vlp.config.loading import load_yaml
from vlp.registry import ConfigError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vlp", description="Vision-language pretraining experiments.")
    commands = parser.add_subparsers(dest="command", required=True)
    fit = commands.add_parser("fit", help="train an experiment")
    fit.add_argument("experiment", help="experiment YAML, e.g. experiments/default.yaml")
    fit.add_argument("overrides", nargs="*", help="key=value overrides, e.g. optim.lr=1e-3 run_dir=runs/x")
    fit.add_argument("--resume", help="checkpoint path, or 'last' for the run directory's last checkpoint")
    evaluate = commands.add_parser("eval", help="evaluate a checkpoint")
    evaluate.add_argument("--ckpt", required=True, help="checkpoint written by vlp fit")
    evaluate.add_argument("--out", help="where to write the metrics JSON (default: next to the run's checkpoints)")
    evaluate.add_argument("overrides", nargs="*", help="key=value overrides, e.g. data.val_size=2000")
    export = commands.add_parser("export", help="merge adapters and write the model in reusable formats")
    export.add_argument("--ckpt", required=True, help="checkpoint written by vlp fit")
    export.add_argument("--out", required=True, help="a new directory to write")
    export.add_argument("--format", choices=["directory", "safetensors"], default="directory",
                        help="directory: transformers save_pretrained + timm safetensors + heads; safetensors: one file")
    caption = commands.add_parser("caption", help="caption image files with a checkpoint trained with a caption decoder (coca)")
    caption.add_argument("--ckpt", required=True, help="checkpoint written by vlp fit")
    caption.add_argument("--beam", type=int, default=1, help="beam width (1: greedy search)")
    caption.add_argument("--captions", type=int, default=1, help="N best captions per image, one line each (beam width at least N)")
    caption.add_argument("images", nargs="+", help="image files")
    embed = commands.add_parser("embed", help="write image or text embeddings of a trained model")
    embed.add_argument("--ckpt", required=True, help="checkpoint written by vlp fit, or a directory written by vlp export")
    embed.add_argument("--images", help="an image directory, or WebDataset shards (dir/{000000..000009}.tar)")
    embed.add_argument("--texts", help="a text file, one text per line")
    embed.add_argument("--out", required=True, help="FILE.safetensors or FILE.npy (row names go to FILE.names.txt)")
    embed.add_argument("--batch-size", type=int, default=64)
    embed.add_argument("--num-workers", type=int, default=0, help="image-decoding processes (image directories)")
    classify = commands.add_parser("classify", help="zero-shot classify images with a trained model")
    classify.add_argument("--ckpt", required=True, help="checkpoint written by vlp fit, or a directory written by vlp export")
    classify.add_argument("--classes", required=True, help='comma-separated class texts, e.g. "a circle,a square,a cross"')
    classify.add_argument("--template", default="{}", help='prompt with {} for the class, e.g. "a photo of a {}." (default: the class text)')
    classify.add_argument("images", nargs="+", help="image files")
    config = commands.add_parser("config", help="print the resolved, validated config")
    config.add_argument("experiment")
    config.add_argument("overrides", nargs="*")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "fit":
            from vlp.run import fit

            fit(args.experiment, args.overrides, resume=args.resume)
        elif args.command == "eval":
            from vlp.run import evaluate

            evaluate(args.ckpt, args.overrides, output=args.out)
        elif args.command == "export":
            from vlp.export import export

            print(f"Exported to {export(args.ckpt, args.out, args.format)}")
        elif args.command == "caption":
            from vlp.captioning import caption_files

            for path, texts in zip(args.images, caption_files(args.ckpt, args.images, beam_size=args.beam, count=args.captions)):
                for text in texts:
                    print(f"{path}\t{text}")
        elif args.command == "embed":
            from vlp.inference import embed

            print(f"Embeddings written to {embed(args.ckpt, args.out, args.images, args.texts, args.batch_size, args.num_workers)}")
        elif args.command == "classify":
            from vlp.inference import classify

            classes = [c.strip() for c in args.classes.split(",") if c.strip()]
            for path, ranked in classify(args.ckpt, classes, args.images, args.template):
                print(f"{path}: " + ", ".join(f"{name} {score:.3f}" for name, score in ranked))
        else:
            from vlp.config.experiment import load_experiment

            load_experiment(args.experiment, args.overrides)
            resolved, _ = load_yaml(args.experiment, args.overrides)
            print(yaml.safe_dump(resolved, sort_keys=False), end="")
    except ConfigError as error:
        print(f"vlp: error: {_one_sentence(error)}", file=sys.stderr)
        return 2
    except TrainingStopped as stop:
        print(f"vlp: stopped: {stop}", file=sys.stderr)
        return stop.exit_code
    return 0


def _one_sentence(error: ConfigError) -> str:
    """A ConfigError raised in a data-loader worker arrives wrapped in the worker's traceback: keep its sentence."""
    text = str(error).strip()
    if "Original Traceback" not in text:
        return text
    last = text.splitlines()[-1]
    return last.split(": ", 1)[1] if last.startswith(("vlp.", "ConfigError")) and ": " in last else last


if __name__ == "__main__":
    sys.exit(main())
