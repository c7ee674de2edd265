"""What the `decontaminate` step costs the data stage, measured in one run.

    python bench/decontamination.py [--corpus ../shared/corpus/webdocs] [--files 2] \
        [--benchmarks ../shared/benchmarks/blimp] [--repeats 2]

The whole data stage in one process (`refresh_dataset`: per-file steps, dedup, write) on the
first `--files` webdocs files, with the default config and with the default config plus the
decontaminate step over every file under `--benchmarks` (its index built and cached before
timing, as a refresh's first worker does), alternating, `--repeats` times each; best wall time
of each, and the seconds spent inside the step itself (the steadier figure on a shared machine).
Target: the step costs <= 10% of the stage's wall time. Run on a quiet machine.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from lmforge.tasks.data.config import DataConfig
from lmforge.tasks.data.refresh import refresh_dataset
from lmforge.tasks.data.steps.decontaminate import Decontaminate

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CORPUS = REPO.parent / "shared" / "corpus" / "webdocs"
DEFAULT_BENCHMARKS = REPO.parent / "shared" / "benchmarks" / "blimp"
TARGET_OVERHEAD = 0.10


def timed_refresh(files: list[Path], config: DataConfig, scratch: Path) -> tuple[float, dict]:
    out = Path(tempfile.mkdtemp(dir=scratch)) / "data"
    started = time.perf_counter()
    manifest = refresh_dataset([str(path) for path in files], out, config)
    return time.perf_counter() - started, manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--benchmarks", type=Path, default=DEFAULT_BENCHMARKS)
    parser.add_argument("--files", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    files = sorted(args.corpus.glob("*.warc.gz"))[: args.files]
    with tempfile.TemporaryDirectory(prefix="lmforge-bench-decon-") as scratch:
        os.environ["LMFORGE_CACHE_DIR"] = str(Path(scratch) / "cache")
        started = time.perf_counter()
        step = Decontaminate(benchmarks=(str(args.benchmarks),))  # builds and caches the index
        build = time.perf_counter() - started
        stats = step.index().stats()
        configs = {"default": DataConfig(), "default + decontaminate": DataConfig(
            decontaminate=step)}  # fmt: skip
        best: dict[str, float] = {}
        manifests: dict[str, dict] = {}
        in_step = StepTimer()
        for _ in range(args.repeats):
            for name, config in configs.items():
                in_step.runs += name != "default"
                seconds, manifests[name] = timed_refresh(files, config, Path(scratch))
                best[name] = min(best.get(name, seconds), seconds)
    responses = manifests["default"]["counts"]["responses"]
    removed = manifests["default + decontaminate"]["counts"]["removed_by_stage"].get(
        "decontaminate", 0
    )
    overhead = best["default + decontaminate"] / best["default"] - 1
    step_share = in_step.seconds / in_step.runs / best["default"]
    print(f"index: {stats['items']} items, {stats['grams']} grams ({stats['skipped_short']} "
          f"texts under {stats['min_item_tokens']} tokens skipped), built in {build:.2f} s")
    print(f"{len(files)} files, {responses} responses; decontaminate removed {removed}")
    print("| config | wall s (best of %d) | responses/s |" % args.repeats)
    print("|---|---:|---:|")
    for name, seconds in best.items():
        print(f"| {name} | {seconds:.2f} | {responses / seconds:.1f} |")
    print(f"| wall-time difference (noisy: the machine's run-to-run spread) | "
          f"{100 * overhead:+.1f}% | |")  # fmt: skip
    print(f"| time inside the step / the default stage's wall time | {100 * step_share:.1f}% "
          f"| <= {100 * TARGET_OVERHEAD:.0f}% |")  # fmt: skip
    return 0 if step_share <= TARGET_OVERHEAD else 1


class StepTimer:
    """Seconds spent in `Decontaminate.apply` (all runs), measured by wrapping it."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.runs = 0
        original = Decontaminate.apply

        def timed(step: Decontaminate, doc):
            started = time.perf_counter()
            try:
                return original(step, doc)
            finally:
                self.seconds += time.perf_counter() - started

        Decontaminate.apply = timed


if __name__ == "__main__":
    sys.exit(main())
