"""Issue 15 figure: switching the resident base model (unload the old pipeline, load the new one).

python -m bench.model_switch [--rounds 5]          two tiny models (seconds, CI-sized)
python -m bench.model_switch --full [--rounds 2]   full-size SD v1.5 architecture (random
                                                   weights, built once into bench/_work, ~4 GB)

With --full both names point at the same folder: a switch still frees the whole pipeline and
loads it again from disk, which is what a switch between two SD 1.5 checkpoints costs.
"""

from __future__ import annotations

import argparse
import statistics
import time

from bench import WORK, models, set_threads


def _tiny_pair() -> tuple[str, str]:
    from tests.tiny_sd import save_tiny_pipeline

    folders = []
    for name, seed in (("switch-a", 0), ("switch-b", 7)):
        folder = WORK / name
        if not (folder / "model_index.json").is_file():
            save_tiny_pipeline(folder, seed=seed)
        folders.append(str(folder))
    return folders[0], folders[1]


def main() -> None:
    """Print the figures as Markdown table rows."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--full", action="store_true", help="full-size SD v1.5 architecture")
    parser.add_argument("--rounds", type=int, default=None)
    args = parser.parse_args()
    rounds = args.rounds or (2 if args.full else 5)
    set_threads(1)
    if args.full:
        first = second = str(models.ensure_sd15())
        label = "full-size SD 1.5 architecture, fp32, CPU"
    else:
        first, second = _tiny_pair()
        label = "tiny test models, CPU"
    from engine.generator import TextToImageGenerator

    config = models.app_config(models.tiny_model_dir())
    config.model = config.model.model_copy(
        update={"model_id": first, "choices": f"a={first},b={second}"}
    )
    gen = TextToImageGenerator(config)
    gen.load_model()
    unloads, loads, switches = [], [], []
    for index in range(rounds):
        target = "b" if index % 2 == 0 else "a"
        started = time.perf_counter()
        gen.unload()  # frees the pipeline, gc.collect() and the CUDA cache included
        middle = time.perf_counter()
        gen.load_model(target)
        done = time.perf_counter()
        unloads.append(middle - started)
        loads.append(done - middle)
        other = "a" if target == "b" else "b"
        started = time.perf_counter()
        gen.ensure_model(other)  # the path a job takes: unload, load, embeddings again
        switches.append(time.perf_counter() - started)
    print(f"| model switch ({label}) | unload {statistics.median(unloads) * 1000:.0f} ms "
          f"| load {statistics.median(loads):.2f} s "
          f"| ensure_model {statistics.median(switches):.2f} s "
          f"(median of {rounds}) |")  # fmt: skip


if __name__ == "__main__":
    main()
