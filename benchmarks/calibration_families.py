"""The validation report's calibration, refitted on the models of a finished run.

Why: the calibration family changed (a slope per task beside the intercept per task,
chosen by out-of-fold log loss: ``components.model.calibration.fit_calibration``), and the
quantize gate reads the out-of-fold ECE. Calibration does not touch training, so a finished
run's models stand for a rerun's (SFT reproduced itself exactly on one machine, issue 14);
this scores each of them on the same seeded
validation sample the pipeline's reports use (``train.data.max_report_prompts``) and prints
both families' out-of-fold ECE and log loss, the noise floor, and the gate's ECE verdict.
Each model directory is copied first: the run's artifacts (and its ``calibration.json``)
are left as they are.

    python -m benchmarks.calibration_families --run-dir runs/local [--profile local]

Needs no Ray and no MLflow.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path
from types import SimpleNamespace

from pipelines.teacher_stages import MODEL_DIR, report_prompts, validation_report

STAGES = ("align", "distill_mid", "distill_small", "quantize")


def _newest(parent: Path, holding: str) -> Path | None:
    """The newest stage output under ``parent`` that holds ``holding``."""
    dirs = sorted((p for p in parent.iterdir() if (p / holding).exists()),
                  key=lambda p: p.stat().st_mtime) if parent.is_dir() else []
    return dirs[-1] if dirs else None


def main(argv: list[str] | None = None) -> None:
    from components.config import load_config

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run-dir", type=Path, required=True, help="a run's work_dir (holds artifacts/)")
    ap.add_argument("--profile", default="local", help="the profile the run used (for the sample size)")
    args = ap.parse_args(argv)
    cfg = load_config(args.profile)
    art = args.run_dir / "artifacts"
    promptify = _newest(art / "promptify", "examples")
    if promptify is None:
        raise SystemExit(f"no promptify output under {art}: run `rankbrew run` first")
    ctx = SimpleNamespace(inputs={"promptify": promptify}, log_artifact=lambda *a, **k: None,
                          note=lambda msg: None)
    limit, max_ece = report_prompts(cfg), cfg.compress.quantize.max_ece
    print(f"{args.run_dir}: {limit} validation prompts; gate ECE <= {max_ece}")
    print("| model | candidates | family kept | OOF ECE: task offsets | OOF ECE: task slopes | "
          "OOF log loss: offsets / slopes | floor | gate ECE |\n|---|---:|---|---:|---:|---|---:|---|")
    for stage in STAGES:
        found = _newest(art / stage, MODEL_DIR)
        if found is None:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            model = Path(tmp) / MODEL_DIR
            shutil.copytree(found / MODEL_DIR, model)
            ctx.out_dir = Path(tmp)  # the report's json and scores land here, not in the run
            m = validation_report(ctx, model, limit, calibrate=True)
        ece = {fam: m[f"calibration.oof_ece.{fam}"] for fam in ("task_offsets", "task_slopes")}
        kept = "task_slopes" if m["calibration.task_slopes"] > 0 else "task_offsets"
        passed = m["valid_ece.trained_out_of_fold"] <= max_ece
        print(f"| {stage} | {int(m['valid_ece.trained_candidates'])} | {kept} | {ece['task_offsets']:.4f} | "
              f"{ece['task_slopes']:.4f} | {m['calibration.oof_log_loss.task_offsets']:.4f} / "
              f"{m['calibration.oof_log_loss.task_slopes']:.4f} | "
              f"{m['valid_ece.trained_out_of_fold_floor']:.4f} | "
              f"{'pass' if passed else 'FAIL'} ({m['valid_ece.trained_out_of_fold']:.4f}) |")


if __name__ == "__main__":
    main()
