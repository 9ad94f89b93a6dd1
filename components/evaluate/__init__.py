"""Evaluation: ranking and calibration metrics, slices, and the ID-based baselines
(popularity, per-task LightGBM, SASRec) the language model is compared with.

Plain Python; no Ray, no MLflow. See docs/evaluation.md.
"""
