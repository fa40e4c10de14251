"""``vlp fit | eval | config``: the command line."""

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
