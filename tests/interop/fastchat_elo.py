"""Runs FastChat's own rating functions (fastchat/serve/monitor/elo_analysis.py, fschat from
PyPI: compute_elo, compute_elo_mle_with_tie, compute_pairwise_win_fraction) on a battle file and
prints what they compute as JSON. The module imports plotly and pytz at its top for its plots, so
the functions are taken out of FastChat's file with `ast` and run on their own (unchanged).

    fastchat_elo.py BATTLES.json ROUNDS SEED
        -> {"online": {model: elo}, "mle": {model: rating}, "win_fraction": {row: {col: f}},
            "bootstrap": {model: {"median", "ci_low", "ci_high"}}}

The bootstrap rounds resample with vhost's documented generator (splitmix64 from the seed, draw
mod n), so that FastChat's compute_elo_mle_with_tie rates exactly the samples vhost rated."""
import ast
import json
import math
import sys
from collections import defaultdict

import numpy as np
import pandas as pd

import fastchat.serve.monitor as monitor

source = open(monitor.__path__[0] + "/elo_analysis.py").read()
wanted = {"compute_elo", "compute_elo_mle_with_tie", "compute_pairwise_win_fraction"}
tree = ast.parse(source)
module = ast.Module(body=[n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in wanted], type_ignores=[])
env = {"np": np, "pd": pd, "math": math, "defaultdict": defaultdict}
exec(compile(module, "elo_analysis.py", "exec"), env)
assert wanted <= env.keys(), "FastChat's elo_analysis.py no longer has " + str(wanted - env.keys())

battles = pd.DataFrame(json.load(open(sys.argv[1])))
rounds, seed = int(sys.argv[2]), int(sys.argv[3])
online = env["compute_elo"](battles)
mle = env["compute_elo_mle_with_tie"](battles)
frac = env["compute_pairwise_win_fraction"](battles, None)

M = (1 << 64) - 1
state = seed
def draw():
    global state
    state = (state + 0x9E3779B97F4A7C15) & M
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M
    return z ^ (z >> 31)
rows = []
n = len(battles)
for _ in range(rounds):
    idx = [draw() % n for _ in range(n)]
    rows.append(env["compute_elo_mle_with_tie"](battles.iloc[idx].reset_index(drop=True)))
boot = pd.DataFrame(rows)
out = {
    "online": {k: float(v) for k, v in online.items()},
    "mle": {k: float(v) for k, v in mle.items()},
    "win_fraction": {r: {c: (None if pd.isna(v) else float(v)) for c, v in row.items()} for r, row in frac.to_dict(orient="index").items()},
    "bootstrap": {m: {"median": float(boot[m].quantile(0.5)), "ci_low": float(boot[m].quantile(0.025)),
                      "ci_high": float(boot[m].quantile(0.975))} for m in boot.columns} if rounds else {},
}
print(json.dumps(out))
