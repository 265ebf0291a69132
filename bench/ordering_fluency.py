"""Fluency of a run's trained ordering model: sample level-3/4 siblings for N chains, score NLL (issue 11).

For N seeded chains of RUN/abstract, samples 3 candidates per level from the generic→specific prompt,
keeps the most likely one that differs from p_k, and prints mean per-token NLL under the shipped
SmolLM2 for positives and negatives at levels 3 and 4, their ratio and a few examples. Usage:
    python bench/ordering_fluency.py RUN N
"""
import os, sys, random, time
os.environ["HF_HUB_OFFLINE"]="1"
import torch; torch.set_num_threads(1)
import numpy as np
from pathlib import Path
from hiercaps_gen.ordering.generate import OrderingModel
from hiercaps_gen.ordering.tasks import down_source
from hiercaps_gen.stages.base import read_stage_rows
from hiercaps_gen.fluency import FluencyScorer
if len(sys.argv) != 3:
    sys.exit(print(__doc__) or 0)
run = Path(sys.argv[1]); n = int(sys.argv[2])
rows = random.Random(1).sample(read_stage_rows(run, "abstract"), n)
m = OrderingModel.from_run(run, "cpu")
t = time.time()
neg = {}
for k in (2, 3):
    outs = m.scored([down_source(r["positive"][:k]) for r in rows], 3, sample=True, temperature=1.0, top_p=0.95, seed=0)
    neg[k] = [max((o for o in os_ if o[0] and o[0].lower() != r["positive"][k].lower()), key=lambda x: x[1], default=("", 0))[0] for os_, r in zip(outs, rows)]
print("sample s", round(time.time() - t))
f = FluencyScorer("embedded:smollm2", "cpu")
for k in (2, 3):
    p = f.nll([r["positive"][k] for r in rows]); q = f.nll([x or "." for x in neg[k]])
    print(f"level {k+1}: pos NLL {p.mean():.2f} neg NLL {q.mean():.2f}; words pos {np.mean([len(r['positive'][k].split()) for r in rows]):.2f} neg {np.mean([len(x.split()) for x in neg[k]]):.2f}")
    neg[f"nll{k}"] = (p.mean(), q.mean())
print("ratio 3+4:", round((neg["nll2"][1] + neg["nll3"][1]) / (neg["nll2"][0] + neg["nll3"][0]), 3))
for r, a, b in list(zip(rows, neg[2], neg[3]))[:8]:
    print("P:", " => ".join(r["positive"]), "\n  N3:", a, "| N4:", b)
