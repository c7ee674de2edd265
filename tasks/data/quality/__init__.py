"""A trainable quality classifier (DCLM's and FineWeb-Edu's recipe): a supervised fastText model
that tells curated reference text (positives) from random web text (negatives).

- `sources`: the texts of each class, read from datasets, Parquet or JSONL;
- `train`: split, write fastText's training file, train in a subprocess, score the held-out part;
- `fasttext_trainer`: that subprocess, with a full fastText build on its path;
- `classifier`: `QualityClassifier`, which loads the model and scores texts in this process.

Importing this package imports no `fasttext` module: the trainer subprocess imports the package
too, and must find its own build's `fasttext`, not the predict-only one.
"""
