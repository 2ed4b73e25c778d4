"""Runs FastChat's own fastchat/llm_judge/show_result.py (fschat from PyPI) on a judgment file and
prints what it computes as JSON, by capturing the DataFrames it prints:
    fastchat_show_result.py single FILE          -> {"turn1": {model: mean}, "turn2": ..., "average": ...}
    fastchat_show_result.py pairwise FILE BASE   -> {model: {win, loss, tie, win_rate, loss_rate, win_rate_adjusted}}"""
import argparse
import json
import sys

import fastchat.llm_judge.show_result as sr

mode, path = sys.argv[1], sys.argv[2]
frames = []
sr.print = lambda *a, **k: frames.extend(x for x in a if hasattr(x, "to_dict"))
args = argparse.Namespace(bench_name="mt_bench", input_file=path, judge_model="gpt-4", model_list=None,
                          baseline_model=sys.argv[3] if len(sys.argv) > 3 else None, mode=mode)
if mode == "single":
    sr.display_result_single(args)
    out = {}
    for name, df in zip(("turn1", "turn2", "average"), frames):
        out[name] = {(k[0] if isinstance(k, tuple) else k): float(v) for k, v in df["score"].to_dict().items()}
else:
    sr.display_result_pairwise(args)
    out = {m: {k: float(v) for k, v in row.items()} for m, row in frames[0].to_dict(orient="index").items()}
print(json.dumps(out))
