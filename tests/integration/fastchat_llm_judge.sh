#!/usr/bin/env bash
# vhost's MT-bench numbers against FastChat's own show_result.py (fschat 0.2.36 from PyPI, in the
# interop venv): judgment files the eval stage writes in FastChat's format give the same
# numbers in vhost's report as in show_result.py, and FastChat-format files written here (as
# FastChat's gen_judgment.py writes them: decimals, a score of 11, -1 for no verdict; pairwise
# wins both ways, a tie, an inconsistent pair, an error) load in `vhost eval report` with the
# same numbers. FastChat's pairwise-all too (pairs = "all" in the stage, and a FastChat file with
# three models), and reference answers from a FastChat reference_answer file reach the judge.
# Skips (CTest) where the venv cannot be made.
#   fastchat_llm_judge.sh BUILD_DIR SOURCE_DIR SCRATCH_DIR
set -euo pipefail
source "$(dirname "$0")/lib.sh" "$@"
rc=0; py=$("$src/scripts/interop-env.sh" "$build/venv-interop" | tail -1) || rc=$?
[ $rc = 0 ] || { [ $rc = 3 ] && { echo "SKIP: the interop venv cannot be made here"; exit 0; }; exit $rc; }
show() { "$py" "$src/tests/interop/fastchat_show_result.py" "$@"; }

# 1. The eval stage, graded by a scripted judge ([[7]] for every answer but one without a
#    verdict; [[A]] always), writes model_judgment/*.jsonl; show_result.py reads them.
start_scripted_judge
cat > questions.jsonl <<'Q'
{"question_id": 1, "category": "writing", "turns": ["Write a haiku.", "Now a limerick."]}
{"question_id": 2, "category": "math", "turns": ["What is 2+2?"], "reference": ["4"]}
{"question_id": 3, "category": "generic", "turns": ["NOVERDICT please"]}
Q
for m in alpha beta; do
  python3 - "$m" > $m.jsonl <<'PY'
import json, sys
m = sys.argv[1]
for q, n in ((1, 2), (2, 1), (3, 1)):
    print(json.dumps({"question_id": q, "model_id": m, "choices": [{"index": 0, "turns": [f"{m} answer {t}" for t in range(n)]}]}))
PY
done
for mode in single pairwise; do
  eval_pipeline eval-$mode.toml $mode out-$mode beta alpha.jsonl beta.jsonl
  "$vhost" run eval-$mode.toml > $mode.log 2>&1 || { cat $mode.log; exit 1; }
done
show single out-single/model_judgment/*_single.jsonl > fc-single.json
show pairwise out-pairwise/model_judgment/*_pair.jsonl beta > fc-pair.json
same() { "$py" "$src/tests/interop/same_as_show_result.py" "$@"; }
same out-single/report.json fc-single.json out-pairwise/report.json fc-pair.json alpha alpha,beta
echo "  the eval stage's judgments in FastChat's files: show_result.py gives vhost's means and win rates"

# 1b. pairs = "all" (FastChat's pairwise-all) over three models, with FastChat's reference answers:
#     gamma's answers to question 1 say WINS (so does beta's second turn: a [[C]] tie there),
#     beta's to question 2; the judge names the reference it was shown (REF-...).
for m in alpha beta gamma; do
  python3 - "$m" > $m-all.jsonl <<'PY'
import json, sys
m = sys.argv[1]
def say(q, t):
    wins = (m == "gamma" and q == 1) or (m == "beta" and (q, t) in ((2, 0), (1, 1)))
    return f"{m} answer {t}" + (" WINS" if wins else "")
for q, n in ((1, 2), (2, 1), (3, 1)):
    print(json.dumps({"question_id": q, "model_id": m, "choices": [{"index": 0, "turns": [say(q, t) for t in range(n)]}]}))
PY
done
echo '{"question_id": 2, "model_id": "gpt-4", "choices": [{"index": 0, "turns": ["REF-FOUR"]}]}' > refs.jsonl
eval_pipeline eval-all.toml pairwise out-all beta alpha-all.jsonl beta-all.jsonl gamma-all.jsonl
printf 'pairs = "all"\nreference_answers = "%s/refs.jsonl"\n' "$scratch" >> eval-all.toml
"$vhost" run eval-all.toml > all.log 2>&1 || { cat all.log; exit 1; }
show pairwise out-all/model_judgment/*_pair.jsonl > fc-all.json
same_all() { "$py" - "$@" <<'PY'
import json, sys
ours, theirs = json.load(open(sys.argv[1]))["pairwise_all"], json.load(open(sys.argv[2]))
assert sorted(ours) == sorted(theirs), (ours, theirs)
for m in theirs:
    for k in ("win", "loss", "tie", "win_rate", "loss_rate", "win_rate_adjusted"):
        assert abs(ours[m][k] - theirs[m][k]) < 1e-9, (m, k, ours[m], theirs[m])
print("  pairwise-all as show_result.py (win/tie/loss): " + ", ".join(f"{m} {theirs[m]['win']:.0f}/{theirs[m]['tie']:.0f}/{theirs[m]['loss']:.0f}" for m in sorted(theirs)))
PY
}
same_all out-all/report.json fc-all.json
python3 - out-all/report.json out-all/judgments.jsonl <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
pairs = sorted((p["model"], p["baseline"]) for p in r["pairs"])
assert pairs == [("alpha", "beta"), ("gamma", "alpha"), ("gamma", "beta")], pairs
g = r["pairwise_all"]["gamma"]
assert (g["win"], g["tie"], g["loss"]) == (3, 2, 1), g
refs = [j for j in map(json.loads, open(sys.argv[2])) if j["question_id"] == 2]
assert refs and all("reference REF-FOUR" in j["judge_text"] for j in refs), refs[:1]
PY
# A malformed reference answer file names file and line (exit 2, nothing judged).
printf '{"question_id": 2, "model_id": "gpt-4", "choices": [{"index": 0, "turns": ["REF-FOUR"]}]}\n{"question_id": 3, "choices": []}\n' > badrefs.jsonl
sed "s|$scratch/refs.jsonl|$scratch/badrefs.jsonl|; s|out-all|out-badrefs|" eval-all.toml > eval-badrefs.toml
rc=0; "$vhost" run eval-badrefs.toml > badrefs.log 2>&1 || rc=$?
[ "$rc" = 2 ] && grep -q "badrefs.jsonl:2: choices\[0\].turns" badrefs.log || { echo "bad reference file: exit $rc"; cat badrefs.log; exit 1; }
echo "  pairs = \"all\" and reference_answers: FastChat's pairwise-all numbers; the reference shown to the judge"

# 2. FastChat-made files (as gen_judgment.py writes them) in vhost eval report.
python3 > fc_single.jsonl <<'PY'
import json
rows = [(1, "m1", 8.5, 1), (1, "m1", 6, 2), (2, "m1", 11, 1), (3, "m1", -1, 1), (1, "m2", 4, 1), (1, "m2", 5.5, 2),
        (2, "m2", 7, 1), (3, "m2", 9, 1)]
for q, m, s, t in rows:
    print(json.dumps({"question_id": q, "model": m, "judge": ["gpt-4", "single-v1"], "user_prompt": "...",
                      "judgment": f"... Rating: [[{s}]]", "score": s, "turn": t, "tstamp": 1.0}))
PY
python3 > fc_pair.jsonl <<'PY'
import json
rows = [(1, "model_1", "model_1", 1), (2, "model_2", "model_2", 1), (3, "tie", "tie", 1), (4, "model_1", "model_2", 1),
        (5, "model_1", "error", 1), (1, "model_1", "tie", 2), (6, "model_1", "model_1", 1)]
for q, g1, g2, t in rows:
    print(json.dumps({"question_id": q, "model_1": "vicuna", "model_2": "gpt-3.5-turbo", "g1_winner": g1, "g2_winner": g2,
                      "judge": ["gpt-4", "pair-v2"], "g1_user_prompt": "", "g1_judgment": "", "g2_user_prompt": "",
                      "g2_judgment": "", "turn": t, "tstamp": 1.0}))
PY
"$vhost" eval report --reviews fc_single.jsonl --out rep-single > rep-single.log 2>&1 || { cat rep-single.log; exit 1; }
"$vhost" eval report --reviews fc_pair.jsonl --baseline gpt-3.5-turbo --out rep-pair > rep-pair.log 2>&1 || { cat rep-pair.log; exit 1; }
show single fc_single.jsonl > fc2-single.json
show pairwise fc_pair.jsonl gpt-3.5-turbo > fc2-pair.json
same rep-single/report.json fc2-single.json rep-pair/report.json fc2-pair.json vicuna m1,m2
python3 - rep-single/report.json rep-pair/report.json <<'PY'
import json, sys
s, o = json.load(open(sys.argv[1]))["single"], json.load(open(sys.argv[2]))["pairs"][0]["overall"]
assert s["m1"]["errors"] == 1 and s["m1"]["outside_1_10"] == 1, s["m1"]
assert o["errors"] == 1 and o["inconsistent"] == 1, o
print(f"  FastChat-made files in vhost eval report: the same numbers as show_result.py "
      f"(single means {s['m1']['mean']:.4g} / {s['m2']['mean']:.4g}; pairwise win rate {o['win_rate']:.4g}, adjusted {o['win_rate_adjusted']:.4g})")
PY
# A FastChat pairwise-all file (three models, pairs in both positions) in vhost eval report.
python3 > fc_all.jsonl <<'PY'
import json
rows = [(1, "a", "b", "model_1", "model_1"), (1, "c", "a", "model_2", "model_1"), (1, "b", "c", "tie", "tie"),
        (2, "a", "b", "model_2", "model_2"), (2, "c", "a", "model_1", "model_1"), (2, "b", "c", "model_1", "error"),
        (3, "b", "a", "model_1", "model_1")]
for q, m1, m2, g1, g2 in rows:
    print(json.dumps({"question_id": q, "model_1": m1, "model_2": m2, "g1_winner": g1, "g2_winner": g2,
                      "judge": ["gpt-4", "pair-v2"], "turn": 1, "tstamp": 1.0}))
PY
"$vhost" eval report --reviews fc_all.jsonl --out rep-all > rep-all.log 2>&1 || { cat rep-all.log; exit 1; }
show pairwise fc_all.jsonl > fc2-all.json
same_all rep-all/report.json fc2-all.json
# A malformed FastChat record names file and line.
echo '{"question_id": 1, "model_1": "a", "model_2": "b", "g1_winner": "A", "g2_winner": "tie"}' > bad.jsonl
if "$vhost" eval report --reviews bad.jsonl > bad.log 2>&1; then cat bad.log; exit 1; fi
grep -q "bad.jsonl:1: g1_winner is 'A'" bad.log || { cat bad.log; exit 1; }
echo "fastchat_llm_judge: ok"
