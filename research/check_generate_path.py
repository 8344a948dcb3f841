"""The winning plan under the package's own generation path (steerpeft.evaluation.runs.generate_texts:
full-prompt prefill + model.generate), compared with the fast path's answers for the first test batch.
Run: PYTHONPATH=. python research/check_generate_path.py fit_L15"""

import json
import sys

from research import common as C
from research import evaluate as E
from research.mars_options import build_plan
from steerpeft.evaluation.runs import generate_texts

name = sys.argv[1] if len(sys.argv) > 1 else "fit_L15"
cfg = E.config(name)
scaler, directions = E.scaler_of(cfg, E.tau_for(cfg))
model, tok = C.load()
batch = next(C.batches(tok, C.prompt_sets()["hb_test"]))
with build_plan(scaler, directions, cfg["hold"]).apply(model):
    texts = generate_texts(model, tok, batch, 48)
fast = json.loads((C.ROOT / "results" / f"eval_{name}_test.json").read_text())["sets"]["hb_test"]["texts"][:len(texts)]
same = [a.strip() == b.strip() for a, b in zip(texts, fast)]
print(f"{sum(same)}/{len(same)} answers identical between generate_texts and the fast path")
for a, b in zip(texts, fast):
    if a.strip() != b.strip():
        print("GENERATE:", repr(a[:100]), "\nFAST:    ", repr(b[:100]))
