"""Wall times of the refresh loop on the webdocs corpus: refreshes that each add the next WARC
files, each followed by the retrain it triggers (shards -> pretrain -> evaluate -> gate).

    python bench/refresh_loop.py                       # 2 rounds, 4 files each, tiny, 300 steps
    python bench/refresh_loop.py --files-per-run 2 --rounds 4 --max-steps 100

Runs the flows in this process (as a worker would, without the event hop: the trigger itself is
tested in tests/test_refresh_loop.py) into a temporary work dir and prints a table: per round,
the refresh's new documents and time, each model stage's time, the gate's decision with both
held-out numbers. Time it on a quiet machine.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CORPUS = REPO.parent / "shared" / "corpus" / "webdocs"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--files-per-run", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-steps", type=int, default=300)
    parser.add_argument("--start", choices=("scratch", "champion"), default="scratch")
    parser.add_argument("--work", type=Path, help="work dir to keep (default: a temporary one)")
    args = parser.parse_args()
    os.environ.pop("MLFLOW_TRACKING_URI", None)

    from lmforge.flows.data_refresh import data_refresh
    from lmforge.flows.params import DataRefreshRun, RetrainRun
    from lmforge.flows.retrain import retrain
    from lmforge.model.train import TrainConfig
    from lmforge.servers import command_prefect_api

    with tempfile.TemporaryDirectory(prefix="lmforge-loop-") as scratch, command_prefect_api(600.0):
        work = args.work or Path(scratch)
        refresh_run = DataRefreshRun(
            input=[str(args.corpus / "*.warc.gz")], out=str(work / "dataset"),
            files_per_run=args.files_per_run,
        )  # fmt: skip
        run = RetrainRun(dataset=refresh_run.out, work_dir=str(work / "model"))
        train = TrainConfig(max_steps=args.max_steps, progress=False)
        rows = []
        for round_number in range(1, args.rounds + 1):
            started = time.perf_counter()
            manifest = data_refresh(run=refresh_run)
            refreshed = time.perf_counter() - started
            added = manifest.get("version_counts", manifest["counts"])["kept"]
            started = time.perf_counter()
            start = args.start if round_number > 1 else "scratch"
            summary = retrain(train=train, run=run.model_copy(update={"start": start}))
            retrained = time.perf_counter() - started
            rows.append((round_number, manifest["counts"]["warc_files"], added, refreshed,
                         retrained, summary))  # fmt: skip
    print("\n| round | WARC files in dataset | documents added | refresh | retrain (shards + "
          "pretrain + eval + gate) | gate |")
    print("|---:|---:|---:|---:|---:|---|")
    for number, files, added, refreshed, retrained, summary in rows:
        print(f"| {number} | {files} | {added:,} | {refreshed:.0f} s | {retrained:.0f} s | "
              f"{summary.get('outcome')}: {summary.get('reason')} |")


if __name__ == "__main__":
    main()
