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

from components.train.config import (
    DEFAULT_PLACEMENT,
    Placement,
    Stage,
    TrainConfig,
    TrainDataConfig,
)

FINAL_MODEL_DIR = "final_model"

# MLflow tags on the stage's run (beside components.tracking's TAG_* and pipelines.dag's
# TAG_NODE_ID): where the worker group ran, so a multi-node run shows that FSDP2 crossed nodes.
#: ``{"0": node id, "1": node id, ...}`` (world rank -> Ray node id) of the latest attempt.
TAG_TRAIN_NODE_IDS = "rankbrew.train_node_ids"
#: JSON list, one entry per worker-group attempt: ``{"from_checkpoint": "step_000004" or
#: null, "node_ids": {...}}``; a restart after a lost node shows as a second entry.
TAG_TRAIN_PLACEMENTS = "rankbrew.train_placements"
#: ``train.placement_strategy`` the group was placed with.
TAG_TRAIN_PLACEMENT_STRATEGY = "rankbrew.train_placement_strategy"
#: Attempts kept in TAG_TRAIN_PLACEMENTS (MLflow caps a tag value at 8,000 characters).
MAX_PLACEMENTS_KEPT = 20


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
    #: world rank -> Ray node id of the attempt that finished
    worker_node_ids: dict[int, str] = field(default_factory=dict)
    #: train.keep_best: the evaluation whose weights were kept (step, metric, value)
    best: dict[str, Any] | None = None


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


def worker_node_ids() -> dict[int, str]:
    """World rank -> Ray node id of every worker of this group (a collective: call it on
    every rank at the same point). One worker without a process group: its own id."""
    import ray
    import torch.distributed as dist

    node_id = ray.get_runtime_context().get_node_id()
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return {0: node_id}
    ids: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(ids, node_id)
    return dict(enumerate(ids))


def record_placement(client: Any, run_id: str, node_ids: dict[int, str],
                     from_checkpoint: str | None, strategy: str) -> None:
    """Tag the stage's MLflow run with this attempt's placement (rank 0, once per attempt:
    a restarted group appends to :data:`TAG_TRAIN_PLACEMENTS`)."""
    import json

    by_rank = {str(r): n for r, n in sorted(node_ids.items())}
    previous = client.get_run(run_id).data.tags.get(TAG_TRAIN_PLACEMENTS)
    attempts = json.loads(previous) if previous else []
    attempts.append({"from_checkpoint": from_checkpoint, "node_ids": by_rank})
    client.set_tag(run_id, TAG_TRAIN_NODE_IDS, json.dumps(by_rank))
    client.set_tag(run_id, TAG_TRAIN_PLACEMENTS, json.dumps(attempts[-MAX_PLACEMENTS_KEPT:]))
    client.set_tag(run_id, TAG_TRAIN_PLACEMENT_STRATEGY, strategy)


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
    node_ids = worker_node_ids()
    if mlflow_client is not None:
        record_placement(mlflow_client, config["mlflow_run_id"], node_ids,
                         Path(ckpt.path).name if ckpt is not None else None,
                         config["placement_strategy"])

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
            "resumed_from_step": result.resumed_from_step, "data_stats": stats,
            "worker_node_ids": node_ids, "best": result.best}


def run_training(stage: Stage, *, data: TrainDataConfig, train: TrainConfig | None = None,
                 tokenizer_dir: str | Path, base_model: str | Path | dict[str, Any] | None = None,
                 storage_path: str | Path, name: str, num_workers: int = 2,
                 cpus_per_worker: float | None = None, use_gpu: bool = False,
                 max_failures: int = 2, num_to_keep: int = 2, commit_checkpoints: bool = True,
                 mlflow_run_id: str | None = None, mlflow_tracking_uri: str | None = None,
                 fault_injection: dict[str, Any] | None = None,
                 teacher_model: str | Path | None = None,
                 placement_strategy: Placement = DEFAULT_PLACEMENT) -> TrainingOutput:
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
        placement_strategy: Ray's placement of the worker group (``train.placement_strategy``):
            ``"STRICT_SPREAD"`` puts each worker on its own node. Where the group ran is
            tagged on ``mlflow_run_id`` (:data:`TAG_TRAIN_NODE_IDS`, one entry per attempt
            in :data:`TAG_TRAIN_PLACEMENTS`) and returned as ``worker_node_ids``.

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
    if placement_strategy == "STRICT_SPREAD":
        _say_if_too_few_nodes(name, num_workers, cpus_per_worker)
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
        "placement_strategy": placement_strategy,
    }
    resources = {"CPU": cpus_per_worker}
    if use_gpu:
        resources["GPU"] = 1
    trainer = TorchTrainer(
        train_worker,
        train_loop_config=config,
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu,
                                     resources_per_worker=resources,
                                     placement_strategy=placement_strategy),
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
        worker_node_ids={int(r): n for r, n in (ret.get("worker_node_ids") or {}).items()},
        best=ret.get("best"),
    )


def _say_if_too_few_nodes(name: str, num_workers: int, cpus_per_worker: float) -> None:
    """STRICT_SPREAD on fewer nodes than workers does not fail: Ray Train waits for nodes
    (an autoscaler may add them). Say so on the console instead of hanging silently."""
    import ray

    from pipelines.console import emit

    fit = [n for n in ray.nodes()
           if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) >= cpus_per_worker]
    if len(fit) < num_workers:
        msg = (f"train.placement_strategy=STRICT_SPREAD needs one node per worker: "
               f"{num_workers} workers, {len(fit)} alive node(s) with {cpus_per_worker:g} CPU; "
               f"waiting for nodes (add them, or set train.placement_strategy=SPREAD or PACK)")
        print(f"[{name}] {msg}", flush=True)
        emit("note", name, msg=msg)


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
