"""The digits recipe's trained model against raw pixels on 600 identical test episodes.

    fewshot train protonet --dataset digits --out runs/digits
    python benchmarks/digits_recipe.py runs/digits      # -> benchmarks/results/digits_recipe.txt

Prints, per shot, the model's accuracy, the pixel baseline's, and the paired difference
(mean, 95% half-width) on the same episodes (digits 5-9, 5-way, 15 queries, seed 0).
"""
import sys, torch
torch.set_num_threads(1)
from fewshot.data import load_dataset, EpisodeSampler
from fewshot.runs import load_run
from fewshot.evaluate import evaluate
from fewshot.methods import PixelNearestMean
from fewshot.metrics import confidence_interval
d = load_dataset("digits", rotations=True)
_, m, st = load_run(sys.argv[1], "last")
for shot in (1, 5):
    s = EpisodeSampler(d, "test", 5, shot, 15, seed=0)
    a = evaluate(m, s, 600, progress=False); b = evaluate(PixelNearestMean(), s, 600, progress=False)
    print(shot, a.summary(), b.summary(), confidence_interval(a.scores - b.scores), flush=True)
