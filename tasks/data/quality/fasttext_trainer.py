"""Train a supervised fastText model in a process of its own:

    python -m lmforge.tasks.data.quality.fasttext_trainer TRAIN_FILE MODEL_FILE PARAMS_JSON

`train.run_fasttext_trainer` starts it with a full fastText build (fasttext-numpy2, installed
with `pip --target` beside the environment) first on PYTHONPATH. That build installs the same
`fasttext` module as the predict-only one that language ID and scoring load, so the two never
share a process. PARAMS_JSON holds `fasttext.train_supervised` keyword arguments.
Exit status `CANNOT_TRAIN`: the `fasttext` found is not a build that trains.
"""

from __future__ import annotations

import argparse
import json
import sys

CANNOT_TRAIN = 3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lmforge.tasks.data.quality.fasttext_trainer")
    parser.add_argument("train_file", help="fastText training file: `__label__X text` per line")
    parser.add_argument("model_file", help="where the trained model is saved (.bin)")
    parser.add_argument("params", help="train_supervised keyword arguments as a JSON object")
    args = parser.parse_args(argv)
    try:
        import fasttext
    except ImportError as error:  # a build for another Python or numpy
        print(f"the fastText trainer does not import: {error}", file=sys.stderr)
        return CANNOT_TRAIN
    if not hasattr(fasttext, "train_supervised"):
        print(f"{fasttext.__file__} is a predict-only fastText build", file=sys.stderr)
        return CANNOT_TRAIN
    model = fasttext.train_supervised(input=args.train_file, **json.loads(args.params))
    model.save_model(args.model_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
