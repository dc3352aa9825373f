#!/usr/bin/env bash
# docs/own-task.md's worked example, run exactly as written there, in a fresh folder;
# prints what a user sees and the accuracy of the predictions (the query images' folder
# names are their true labels). Output: benchmarks/results/own_task.txt.
#   bash benchmarks/own_task.sh > benchmarks/results/own_task.txt
set -euo pipefail
PYTHON=${PYTHON:-python}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # one thread: CPU-seconds comparable across machines
work=$(mktemp -d)
cd "$work"
echo "# $(date -u +%FT%TZ), fewshot $($PYTHON -c 'import fewshot; print(fewshot.__version__)'), in a fresh folder"

cat > make_task.py <<'PY'
# make_task.py: my_task/support/<class>/*.png (5 labelled per class), my_task/query/<class>/*.png (20 per class)
from pathlib import Path
from PIL import Image
from sklearn.datasets import load_digits

digits, seen = load_digits(), {}
for image, label in zip(digits.images, digits.target):
    n = seen[label] = seen.get(label, 0) + 1
    part = "support" if n <= 5 else "query" if n <= 25 else None
    if label >= 5 and part:
        folder = Path("my_task", part, f"digit-{label}")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((image * 255 / 16).astype("uint8")).save(folder / f"{n}.png")
PY
$PYTHON make_task.py

start=$(date +%s)
echo '$ fewshot train protonet --dataset digits --out runs/digits --quiet'
$PYTHON -m fewshot train protonet --dataset digits --out runs/digits --quiet
echo "  (train: $(( $(date +%s) - start )) s wall)"
echo '$ fewshot predict runs/digits --support my_task/support --queries my_task/query | head -4'
$PYTHON -m fewshot predict runs/digits --support my_task/support --queries my_task/query | head -4
echo '$ fewshot export runs/digits --out digits.safetensors'
$PYTHON -m fewshot export runs/digits --out digits.safetensors

cat > use_model.py <<'PY'
import fewshot

learner = fewshot.load("digits.safetensors")          # no run folder needed
images, labels = fewshot.image_folder("my_task/support")
learner.fit(images, labels)
queries = fewshot.image_files("my_task/query")
print(learner.predict(queries)[:5], learner.predict_proba(queries).max(1)[:5].round(2))
PY
echo '$ python use_model.py'
$PYTHON use_model.py

$PYTHON - <<'PY'
import json, subprocess, sys
rows = json.loads(subprocess.run([sys.executable, "-m", "fewshot", "predict", "digits.safetensors", "--support",
                                  "my_task/support", "--queries", "my_task/query", "--json"],
                                 capture_output=True, text=True, check=True).stdout)
right = [r["label"] == r["path"].split("/")[-2] for r in rows]
confidence = sum(r["probability"] for r in rows) / len(rows)
print(f"measured: {sum(right)}/{len(rows)} query images right ({100 * sum(right) / len(rows):.1f} %), "
      f"mean predicted probability {100 * confidence:.1f} %; 5-way, 5 labelled images per class")
PY
rm -rf "$work"
