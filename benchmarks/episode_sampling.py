"""Episode sampling speed: 5-way 5-shot 15-query Omniglot episodes per second from the cache.

    FEWSHOT_DATA=../shared/data python benchmarks/episode_sampling.py

Target: at least 5,000 episodes/s, so sampling is never the bottleneck of training.
Writes benchmarks/results/episode_sampling.json.
"""

import json
import sys
import time
from pathlib import Path

import torch

from fewshot.data import EpisodeSampler, load_dataset


def main(count: int = 20000) -> None:
    start = time.perf_counter()
    data = load_dataset("omniglot")
    load_seconds = time.perf_counter() - start
    results = {"benchmark": "episode_sampling", "command": " ".join(["python", *sys.argv]),
               "torch_threads": torch.get_num_threads(), "cached_load_seconds": load_seconds, "settings": {}}
    for way, shot, query in ((5, 5, 15), (5, 1, 15), (20, 5, 15), (60, 1, 5)):
        sampler = EpisodeSampler(data, "train", way, shot, query, seed=0)
        for i in range(200):  # warm-up
            sampler.episode(i)
        start = time.perf_counter()
        cpu = time.process_time()
        for i in range(count):
            sampler.episode(i)
        seconds = time.perf_counter() - start
        name = f"{way}-way {shot}-shot {query}-query"
        results["settings"][name] = {"episodes_per_second": count / seconds,
                                     "cpu_seconds_per_1000": (time.process_time() - cpu) / count * 1000}
        print(f"{name}: {count / seconds:,.0f} episodes/s")
    out = Path(__file__).parent / "results" / "episode_sampling.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
