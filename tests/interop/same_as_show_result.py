"""Asserts that vhost's report.json equals what FastChat's show_result.py computed
(fastchat_show_result.py's JSON): single means per turn and overall for each model, and the
pairwise counts and win rates of one model against the baseline.
    same_as_show_result.py SINGLE_REPORT FC_SINGLE PAIR_REPORT FC_PAIR PAIR_MODEL MODEL,MODEL..."""
import json
import sys

single, fc_single, pair, fc_pair, pair_model, models = sys.argv[1:]
ours, theirs = json.load(open(single))["single"], json.load(open(fc_single))
for m in models.split(","):
    assert abs(ours[m]["turns"]["1"] - theirs["turn1"][m]) < 1e-9, (m, ours[m], theirs)
    assert abs(ours[m]["turns"]["2"] - theirs["turn2"][m]) < 1e-9, (m, ours[m], theirs)
    assert abs(ours[m]["mean"] - theirs["average"][m]) < 1e-9, (m, ours[m], theirs)
o, t = json.load(open(pair))["pairs"][0]["overall"], json.load(open(fc_pair))[pair_model]
for k in ("win", "loss", "tie", "win_rate", "loss_rate", "win_rate_adjusted"):
    assert abs(o[k] - t[k]) < 1e-9, (k, o, t)
