"""The tiny synthetic pipeline run that several test modules read (run once per session).

A teacher small enough for a test: the stages, not the model quality, are under test
(quality is measured by the evaluation stage and reported in docs/benchmarks.md).
"""

from __future__ import annotations

from pathlib import Path

from components.config import load_config
from pipelines.ray_runner import run_pipeline
from pipelines.stages import build_pipeline

#: Model and chain settings of the tiny run.
TINY_TEACHER = {
    "model.hidden_size": 32, "model.num_layers": 1, "model.num_heads": 2,
    "model.num_kv_heads": 1, "model.intermediate_size": 64,
    "train.data.max_train_prompts": 64, "train.data.max_valid_prompts": 48,
    **{f"train.{s}.{k}": v for s in ("cpt", "sft", "align")
       for k, v in (("max_steps", 3), ("warmup_steps", 1), ("checkpoint_every", 2), ("log_every", 1))},
    # the compression chain at test size: a pruned step (fewer channels) and a random one
    "compress.chain": [
        {"name": "mid", "intermediate_size": 32,
         "train": {"max_steps": 2, "warmup_steps": 1, "checkpoint_every": 1, "log_every": 1}},
        {"name": "small", "init": "random", "hidden_size": 16,
         "train": {"max_steps": 2, "warmup_steps": 1, "checkpoint_every": 1, "log_every": 1}}],
    "compress.latency_candidates": 8,
}


def run(cfg, stop_after=None):
    return run_pipeline(build_pipeline(cfg), cfg, profile="test", stop_after=stop_after)


def tiny_config(work: Path):
    """The config of the session's tiny run (experiment ``data-e2e``)."""
    return load_config("local", {
        "run.work_dir": str(work), "run.name": "data-e2e",
        "data.synthetic.members": 300, "data.synthetic.members_per_file": 100,
        **TINY_TEACHER, "evaluate.max_prompts_per_task": 20, "evaluate.bootstrap_samples": 50,
    })
