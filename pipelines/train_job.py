"""Ray Train adapter of the training core: CPT, SFT or alignment on N workers with FSDP2.

Thin on purpose: the loop, losses, data and sharding are ``components.train`` and run the
same in one process. Ray Train adds the worker group (one process per worker, a
torch.distributed group: gloo on CPU, NCCL on GPU), persistent checkpoints under
``storage_path/name`` and restarts: when a worker dies, ``FailureConfig(max_failures)``
restarts the whole group, ``ray.train.get_checkpoint()`` hands back the latest reported
checkpoint, and the loop continues from its step.

Every worker builds the same data (deterministic) and the same initial model (same
seed); the loop's ``BatchPlan`` deals the batches, so no Ray Data is needed for the
small tokenized sets this project trains on.

Usage::

    from pipelines.train_job import run_training
    out = run_training("sft", data=TrainDataConfig(examples_dir=...),
                       train=TrainConfig(max_steps=200), tokenizer_dir=...,
                       base_model={"hidden_size": 64, "num_layers": 2},
                       storage_path="/abs/runs/train", name="sft-tiny", num_workers=2)
    out.model_dir   # save_pretrained directory (safetensors + tokenizer)
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components.train.config import Stage, TrainConfig, TrainDataConfig

FINAL_MODEL_DIR = "final_model"


@dataclass
class TrainingOutput:
    """What a training job produced."""

    model_dir: Path
    history: list[dict[str, float]]
    evals: list[dict[str, float]]
    checkpoint_path: str | None
    run_path: str
    resumed_from_step: int | None
    data_stats: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def build_datasets(stage: str, data: TrainDataConfig, tokenizer, yes_id: int, no_id: int):
    """``(train_set, valid_set, stats)`` for ``stage`` from the configured directories."""
    from components.train.data import (
        build_cpt_dataset,
        read_examples,
        read_member_rows,
        tokenize_prompts,
    )

    if stage == "cpt":
        if data.member_rows_dir is None:
            raise ValueError("stage 'cpt' needs data.member_rows_dir (the prepare stage's "
                             "member_rows/): set it")
        rows = read_member_rows(data.member_rows_dir)
        train_set = build_cpt_dataset(rows, tokenizer, data.cpt_seq_len, data.history_cutoff,
                                      data.history_column, data.profile_column,
                                      data.document_mask)
        stats = {f"cpt.{k}": v for k, v in train_set.stats.as_dict().items()}
    else:
        if data.examples_dir is None:
            raise ValueError(f"stage {stage!r} needs data.examples_dir (the promptify stage's "
                             f"examples/): set it")
        rows = read_examples(data.examples_dir, "train", data.include_held_out,
                             data.max_train_prompts)
        train_set = tokenize_prompts(rows, tokenizer, yes_id, no_id, data.max_seq_len,
                                     data.layout, with_answers=True)
        stats = {f"train.{k}": v for k, v in train_set.stats.as_dict().items()}
    valid_set = None
    if data.examples_dir is not None and data.max_valid_prompts:
        vrows = read_examples(data.examples_dir, "valid", False, data.max_valid_prompts)
        if vrows.height:
            valid_set = tokenize_prompts(vrows, tokenizer, yes_id, no_id,
                                         data.eval_max_seq_len, "multi_item",
                                         with_answers=False)
            stats.update({f"valid.{k}": v for k, v in valid_set.stats.as_dict().items()})
    return train_set, valid_set, stats


def load_base_model(base_model: str | Path | dict[str, Any] | None, vocab_size: int,
                    seed: int, pad_id: int | None, eos_id: int | None):
    """A local HF causal-LM directory (safetensors only); ``{"model_config": {...}}``, a
    :class:`components.model.factory.ModelConfig` to build; or ``build_tiny_llama(**dict)``."""
    import torch

    from components.train.loop import build_tiny_llama

    if isinstance(base_model, dict) and "model_config" in base_model:
        from components.model.factory import ModelConfig, build_model

        torch.manual_seed(seed)  # the same initial weights on every rank
        return build_model(ModelConfig.model_validate(base_model["model_config"]), vocab_size,
                           pad_token_id=pad_id)
    if base_model is None or isinstance(base_model, dict):
        kwargs = dict(base_model or {})
        kwargs.setdefault("seed", seed)
        return build_tiny_llama(vocab_size, pad_token_id=pad_id, eos_token_id=eos_id, **kwargs)
    path = Path(base_model)
    if not any(path.glob("*.safetensors")):
        raise FileNotFoundError(f"base_model={path} has no *.safetensors: give a directory "
                                f"written by save_pretrained (a previous stage's final_model)")
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32,
                                                 use_safetensors=True)
    if model.get_output_embeddings().weight.shape[0] < vocab_size:
        raise ValueError(f"base_model={path} has a vocabulary of "
                         f"{model.get_output_embeddings().weight.shape[0]} < the tokenizer's "
                         f"{vocab_size}: use the tokenizer the model was trained with")
    return model


def train_worker(config: dict[str, Any]) -> dict[str, Any] | None:
    """The per-worker function Ray Train runs (every rank)."""
    import ray.train
    import torch

    from components.promptify.tokenizer import answer_token_ids, load_tokenizer
    from components.train.loop import save_final_model, train

    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    stage: str = config["stage"]
    data = TrainDataConfig.model_validate(config["data"])
    tcfg = TrainConfig.model_validate(config["train"])
    torch.set_num_threads(config["threads"])
    use_gpu = config["use_gpu"]
    device = torch.device("cuda", torch.cuda.current_device()) if use_gpu else torch.device("cpu")

    tok = load_tokenizer(Path(config["tokenizer_dir"]))
    yes_id, no_id = answer_token_ids(tok)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    train_set, valid_set, stats = build_datasets(stage, data, tok, yes_id, no_id)
    lm = load_base_model(config["base_model"], len(tok), tcfg.seed, pad_id, tok.eos_token_id)
    teacher = None
    if config.get("teacher_model"):  # distill: the parent model, scored under no_grad
        teacher = load_base_model(config["teacher_model"], len(tok), tcfg.seed, pad_id,
                                  tok.eos_token_id)

    scratch = Path(tempfile.mkdtemp(prefix=f"rankbrew-train-r{rank}-"))
    resume_dir = None
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        resume_dir = ckpt.to_directory(str(scratch / "resume"))

    mlflow_client = None
    if rank == 0 and config.get("mlflow_run_id"):
        from mlflow.tracking import MlflowClient  # lazy: MLflow is optional

        mlflow_client = MlflowClient(tracking_uri=config.get("mlflow_tracking_uri"))

    def on_log(metrics: dict[str, float]) -> None:
        if rank == 0 and "loss" in metrics:
            from pipelines.console import emit

            tps = metrics.get("tokens_per_s")
            emit("progress", config.get("name") or stage, done=metrics["step"], total=tcfg.max_steps, unit="steps",
                 info=f"loss {metrics['loss']:.3f}" + (f"  {tps:,.0f} tok/s" if tps else ""))
        if mlflow_client is None:
            return
        from mlflow.entities import Metric

        step = int(metrics["step"])
        now = int(time.time() * 1000)
        mlflow_client.log_batch(config["mlflow_run_id"], metrics=[
            Metric(f"{stage}.{k}", float(v), now, step)
            for k, v in metrics.items() if k != "step"])

    def on_checkpoint(ckpt_dir: Path, metrics: dict[str, float]) -> None:
        from ray.train import Checkpoint

        step = int(metrics["step"])
        ray.train.report({k: float(v) for k, v in metrics.items()},
                         checkpoint=Checkpoint.from_directory(str(ckpt_dir)),
                         checkpoint_dir_name=f"step_{step:06d}")
        if config["commit_checkpoints"]:
            # A report is registered only when the controller has polled every worker
            # (every ~2 s); a worker dying before that loses it and a restart would go
            # back to an older checkpoint. Block until it is committed.
            from ray.train import CheckpointConsistencyMode

            ray.train.get_all_reported_checkpoints(
                consistency_mode=CheckpointConsistencyMode.COMMITTED)
        shutil.rmtree(ckpt_dir, ignore_errors=True)  # persisted by report; keep scratch small

    fault = config.get("fault_injection") or {}

    def on_step(step: int, metrics: dict[str, float]) -> None:
        # Test hook: kill this worker process once (the marker file makes it once per job).
        if fault and rank == fault["rank"] and step == fault["step"]:
            marker = Path(fault["marker"])
            if not marker.exists():
                marker.write_text(f"killed rank {rank} at step {step}\n")
                os._exit(1)

    result = train(lm, train_set, tcfg, scratch, yes_id=yes_id, no_id=no_id, pad_id=pad_id,
                   valid_set=valid_set, resume_from=Path(resume_dir) if resume_dir else None,
                   device=device, on_checkpoint=on_checkpoint, on_log=on_log, on_step=on_step,
                   teacher=teacher)
    out = save_final_model(result.module, tok, Path(config["final_model_dir"]))
    shutil.rmtree(scratch, ignore_errors=True)
    if rank != 0:
        return None
    return {"model_dir": str(out), "history": result.history, "evals": result.evals,
            "resumed_from_step": result.resumed_from_step, "data_stats": stats}


def run_training(stage: Stage, *, data: TrainDataConfig, train: TrainConfig | None = None,
                 tokenizer_dir: str | Path, base_model: str | Path | dict[str, Any] | None = None,
                 storage_path: str | Path, name: str, num_workers: int = 2,
                 cpus_per_worker: float | None = None, use_gpu: bool = False,
                 max_failures: int = 2, num_to_keep: int = 2, commit_checkpoints: bool = True,
                 mlflow_run_id: str | None = None, mlflow_tracking_uri: str | None = None,
                 fault_injection: dict[str, Any] | None = None,
                 teacher_model: str | Path | None = None) -> TrainingOutput:
    """Train one stage on a Ray Train worker group; returns the final model and metrics.

    Args:
        stage: ``"cpt"`` (member histories), ``"sft"``, ``"align"`` or ``"distill"``
            (promptified examples).
        teacher_model: ``distill``: the parent's ``save_pretrained`` directory; every worker
            loads a full copy and scores each batch with it under ``no_grad``.
        base_model: the previous stage's ``final_model`` directory, or keyword arguments of
            ``build_tiny_llama`` (``None``: its defaults) to start from random weights.
        storage_path: absolute directory for Ray Train's run (checkpoints, results); the
            final model goes to ``storage_path/name/final_model``. Running again with the
            same ``name`` resumes from that run's latest checkpoint (Ray Train V2 restores
            the run's checkpoint manager from storage; a finished run does no more steps):
            use a new ``name`` for a fresh run, and the same one to continue after the
            driver died.
        cpus_per_worker: Ray CPU resource per worker; default leaves room for one more
            worker's worth (fractional on small machines, where Ray Data and the
            controller need CPUs too). Torch threads = max(1, floor(cpus_per_worker)).
        commit_checkpoints: wait after each checkpoint report until Ray Train has
            committed it (up to its ~2 s poll), so a failure right after a checkpoint
            resumes from that checkpoint and not the one before.
        fault_injection: tests only: ``{"rank", "step", "marker"}`` kills that rank once.

    Raises ``RuntimeError`` naming the worker error if training failed after
    ``max_failures`` restarts.
    """
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    if stage not in ("cpt", "sft", "align", "distill"):
        raise ValueError(f"stage={stage!r}: use 'cpt', 'sft', 'align' or 'distill'")
    if stage == "distill" and (train or TrainConfig()).kd_weight > 0 and teacher_model is None:
        raise ValueError("stage 'distill' needs teacher_model (the parent's model directory) "
                         "unless train.kd_weight is 0")
    train = (train or TrainConfig()).model_copy(update={"stage": stage})
    storage_path = Path(storage_path)
    if not storage_path.is_absolute():
        raise ValueError(f"storage_path={storage_path} must be absolute (Ray workers resolve "
                         f"it from their own working directories)")
    if not ray.is_initialized():
        raise RuntimeError("Ray is not initialized: call ray.init() (or run through the "
                           "pipeline, which starts Ray) before run_training")
    if cpus_per_worker is None:
        total = float(ray.cluster_resources().get("CPU", num_workers))
        cpus_per_worker = max(0.1, min(1.0, total / (num_workers + 1)))
    final_dir = storage_path / name / FINAL_MODEL_DIR
    config = {
        "stage": stage,
        "name": name,  # the pipeline stage (progress bars): distill_<step> for a distill stage
        "data": data.model_dump(mode="json"),
        "train": train.model_dump(mode="json"),
        "tokenizer_dir": str(Path(tokenizer_dir).resolve()),
        "base_model": str(Path(base_model).resolve()) if isinstance(base_model, str | Path)
        else base_model,
        "threads": max(1, int(cpus_per_worker)),
        "use_gpu": use_gpu,
        "final_model_dir": str(final_dir),
        "mlflow_run_id": mlflow_run_id,
        "mlflow_tracking_uri": mlflow_tracking_uri,
        "fault_injection": fault_injection,
        "teacher_model": str(Path(teacher_model).resolve()) if teacher_model else None,
        "commit_checkpoints": commit_checkpoints,
    }
    resources = {"CPU": cpus_per_worker}
    if use_gpu:
        resources["GPU"] = 1
    trainer = TorchTrainer(
        train_worker,
        train_loop_config=config,
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu,
                                     resources_per_worker=resources),
        run_config=RunConfig(
            storage_path=str(storage_path), name=name,
            checkpoint_config=CheckpointConfig(num_to_keep=num_to_keep),
            failure_config=FailureConfig(max_failures=max_failures)),
    )
    t0 = time.perf_counter()
    try:
        result = trainer.fit()  # Train V2 raises the run's error instead of returning it
    except Exception as err:
        raise RuntimeError(f"training stage {stage!r} ({name}) failed (up to {max_failures} "
                           f"restarts were allowed): {err}; worker logs: "
                           f"{storage_path / name}") from err
    seconds = time.perf_counter() - t0
    ret = result.return_value or {}
    return TrainingOutput(
        model_dir=Path(ret.get("model_dir") or final_dir),
        history=ret.get("history", []),
        evals=ret.get("evals", []),
        checkpoint_path=result.checkpoint.path if result.checkpoint else None,
        run_path=str(result.path),
        resumed_from_step=ret.get("resumed_from_step"),
        data_stats=ret.get("data_stats", {}),
        seconds=seconds,
    )


def main(argv: list[str] | None = None) -> None:
    """Benchmark/smoke entry point: one stage on a local Ray, a JSON summary on stdout.

    Example (the numbers in docs/training.md)::

        python -m pipelines.train_job --stage sft --examples-dir RUN/artifacts/promptify/KEY/examples \\
            --tokenizer-dir RUN/artifacts/tokenizer/KEY/tokenizer --storage /tmp/rbtrain \\
            --steps 30 --workers 2 --hidden 256 --layers 4
    """
    import argparse
    import json
    import logging
    import statistics

    import ray

    ap = argparse.ArgumentParser(description=main.__doc__.splitlines()[0])
    ap.add_argument("--stage", choices=["cpt", "sft", "align"], default="sft")
    ap.add_argument("--examples-dir", type=Path)
    ap.add_argument("--member-rows-dir", type=Path)
    ap.add_argument("--cutoff", help="cpt: ISO time; history events before it only")
    ap.add_argument("--tokenizer-dir", type=Path, required=True)
    ap.add_argument("--storage", type=Path, required=True, help="absolute Ray Train storage")
    ap.add_argument("--name", default=None)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--cpus-per-worker", type=float, default=None)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--max-seq-len", type=int, default=1024)
    ap.add_argument("--cpt-seq-len", type=int, default=512)
    ap.add_argument("--layout", choices=["sequential", "multi_item"], default="sequential")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--intermediate", type=int, default=768)
    ap.add_argument("--experts", type=int, default=0, help=">0: a Mixtral with this many")
    ap.add_argument("--max-train-prompts", type=int, default=2000)
    ap.add_argument("--max-valid-prompts", type=int, default=100)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--lm-weight", type=float, default=0.0)
    ap.add_argument("--group-by-length", type=int, default=0,
                    help="rounds per length-sorted window (0: plain shuffle)")
    args = ap.parse_args(argv)

    data = TrainDataConfig(
        examples_dir=args.examples_dir, member_rows_dir=args.member_rows_dir,
        history_cutoff=args.cutoff, max_seq_len=args.max_seq_len,
        cpt_seq_len=args.cpt_seq_len, layout=args.layout,
        max_train_prompts=args.max_train_prompts, max_valid_prompts=args.max_valid_prompts)
    train = TrainConfig(stage=args.stage, max_steps=args.steps, batch_size=args.batch_size,
                        lr=args.lr, warmup_steps=min(10, args.steps - 1),
                        checkpoint_every=max(1, args.steps // 2), log_every=1,
                        lm_weight=args.lm_weight, group_by_length=args.group_by_length)
    base = {"hidden_size": args.hidden, "num_layers": args.layers, "num_heads": args.heads,
            "num_kv_heads": args.kv_heads, "intermediate_size": args.intermediate,
            "num_experts": args.experts}
    ray.init(include_dashboard=True, logging_level=logging.WARNING)  # State API: see RayConfig
    out = run_training(args.stage, data=data, train=train, tokenizer_dir=args.tokenizer_dir,
                       base_model=base, storage_path=args.storage.resolve(),
                       name=args.name or f"{args.stage}-{int(time.time())}",
                       num_workers=args.workers, cpus_per_worker=args.cpus_per_worker)
    steady = [h["tokens_per_s"] for h in out.history[2:]] or [out.history[-1]["tokens_per_s"]]
    print(json.dumps({
        "stage": args.stage, "workers": args.workers, "steps": len(out.history),
        "first_loss": out.history[0]["loss"], "last_loss": out.history[-1]["loss"],
        "tokens_per_s_median": statistics.median(steady),
        "tokens_per_s_per_worker_median": statistics.median(steady) / args.workers,
        "tokens_seen": out.history[-1]["tokens_seen"], "fit_seconds": round(out.seconds, 1),
        "evals": out.evals, "model_dir": str(out.model_dir), "data_stats": out.data_stats,
    }, indent=1))
    ray.shutdown()


if __name__ == "__main__":
    main()
