"""Evaluation: validation metrics, benchmarks (BLiMP, multiple choice), the lm-eval adapter."""
