"""Experiment configs: YAML with inheritance and overrides, validated before anything is built."""

from vlp.config.experiment import Experiment, load_experiment

__all__ = ["Experiment", "load_experiment"]
