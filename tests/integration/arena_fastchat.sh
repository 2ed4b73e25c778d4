#!/usr/bin/env bash
# `vhost arena report` against FastChat's own elo_analysis.py functions (fschat 0.2.36 from PyPI,
# in the interop venv) on the same battles: online Elo, the Bradley-Terry MLE rating, the
# win-fraction matrix, and the bootstrap's median and 95% interval (the same resamples, from
# vhost's documented generator). The same battles given as chat-page votes rate the same; pairwise
# judgments become battles; malformed battle files are named at their line. Then judge agreement
# against FastChat's compute_agreement.py. Skips (CTest) where the venv cannot be made.
#   arena_fastchat.sh BUILD_DIR SOURCE_DIR SCRATCH_DIR
set -euo pipefail
source "$(dirname "$0")/lib.sh" "$@"
rc=0; py=$("$src/scripts/interop-env.sh" "$build/venv-interop" | tail -1) || rc=$?
[ $rc = 0 ] || { [ $rc = 3 ] && { echo "SKIP: the interop venv cannot be made here"; exit 0; }; exit $rc; }

# 600 battles among five models of known strengths, with ties and both-bad ties, as FastChat's
# clean_battle_data.py writes them; the same battles as vhost serve's vote log.
python3 - <<'PY'
import json, random
rng = random.Random(7)
strength = {"vicuna-13b": 1.2, "koala-13b": 0.6, "alpaca-13b": 0.1, "llama-13b": -0.4, "dolly-12b": -0.9}
names = list(strength)
battles, votes = [], []
for i in range(600):
    a, b = rng.sample(names, 2)
    p = 1 / (1 + 10 ** (strength[b] - strength[a]))
    u = rng.random()
    w = "tie" if u < 0.12 else "tie (bothbad)" if u < 0.18 else "model_a" if rng.random() < p else "model_b"
    battles.append({"model_a": a, "model_b": b, "winner": w, "anony": i % 3 != 0})
    votes.append({"time": 1.7e9 + i, "vote": {"models": [a, b], "vote": {"model_a": "A", "model_b": "B", "tie": "tie",
                  "tie (bothbad)": "bad"}[w], "anonymous": i % 3 != 0, "conversation": [[], []]}})
    if i % 50 == 0:
        votes.append({"time": 1.7e9 + i, "endpoint": "chat", "id": "x", "model": a, "prompt": ["hi"], "choices": ["hello"]})
json.dump(battles, open("battles.json", "w"), indent=2)
with open("votes.jsonl", "w") as f:
    for v in votes:
        f.write(json.dumps(v) + "\n")
PY
# FastChat's compute_elo_mle_with_tie shifts every rating so that llama-13b has 800 (its
# leaderboard's calibration); vhost does that when asked: --anchor llama-13b=800.
"$vhost" arena report battles.json --bootstrap 40 --seed 11 --anchor llama-13b=800 --json --out report > vhost.json 2> notes.txt || { cat notes.txt; exit 1; }
"$py" "$src/tests/interop/fastchat_elo.py" battles.json 40 11 > fastchat.json
"$vhost" arena report votes.jsonl --bootstrap 40 --seed 11 --anchor llama-13b=800 --json > votes.json 2> votes-notes.txt || { cat votes-notes.txt; exit 1; }
grep -q "600 votes, 12 conversations skipped" votes-notes.txt || { cat votes-notes.txt; exit 1; }
python3 - vhost.json fastchat.json votes.json <<'PY'
import json, sys
v, f, votes = (json.load(open(p)) for p in sys.argv[1:])
assert v["battles"] == 600 and v["anonymous_battles"] == 400, v["battles"]
rows = {m["model"]: m for m in v["models"]}
d_online = max(abs(rows[m]["online_elo"] - x) for m, x in f["online"].items())
d_mle = max(abs(rows[m]["rating"] - x) for m, x in f["mle"].items())
d_frac = max(abs(v["win_fraction"]["matrix"][v["win_fraction"]["models"].index(r)][v["win_fraction"]["models"].index(c)] - x)
             for r, row in f["win_fraction"].items() for c, x in row.items() if x is not None)
d_boot = max(abs(rows[m][k] - b[k]) for m, b in f["bootstrap"].items() for k in ("median", "ci_low", "ci_high"))
print(f"  vs FastChat's elo_analysis.py: online Elo max |diff| {d_online:.2e}, MLE {d_mle:.2e}, "
      f"win fraction {d_frac:.2e}, bootstrap median/CI {d_boot:.2e} (rating points)")
print("  " + ", ".join(f"{m['model']} {m['rating']:.1f} [{m['ci_low']:.1f}, {m['ci_high']:.1f}]" for m in v["models"]))
assert d_online < 1e-6, d_online
# sklearn's lbfgs stops at its tolerance (1e-4); vhost's Newton solves to machine precision.
assert d_mle < 0.5 and d_boot < 0.5, (d_mle, d_boot)
assert d_frac < 1e-12, d_frac
assert [m["model"] for m in v["models"]] == sorted(f["mle"], key=lambda k: -f["mle"][k])
assert v["models"][0]["model"] == "vicuna-13b" and v["models"][-1]["model"] == "dolly-12b"
assert json.dumps(votes["models"]) == json.dumps(v["models"]), "the votes rate differently from the same battles"
PY
test -s report/arena.html && grep -q "<svg" report/arena.html && test -s report/arena.md

# Without --anchor the ratings are FastChat's before its calibration: every one shifted alike.
"$vhost" arena report battles.json --bootstrap 0 --json > plain.json
python3 - plain.json vhost.json <<'PY'
import json, sys
a, b = ({m["model"]: m["rating"] for m in json.load(open(p))["models"]} for p in sys.argv[1:])
assert abs(b["llama-13b"] - 800) < 1e-9, b
shift = b["llama-13b"] - a["llama-13b"]
assert all(abs(b[m] - a[m] - shift) < 1e-6 for m in a), (a, b)
PY
"$vhost" arena report battles.json --anonymous-only --bootstrap 0 --json > anony.json
python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); assert r["battles"] == 400, r["battles"]' anony.json

# Pairwise judgments are battles too: one per question, the two orders agreeing or a tie.
cat > judgments.jsonl <<'J'
{"mode":"pairwise","question_id":1,"turn":1,"model_a":"x","model_b":"y","order":"ab","winner":"x"}
{"mode":"pairwise","question_id":1,"turn":1,"model_a":"x","model_b":"y","order":"ba","winner":"x"}
{"mode":"pairwise","question_id":2,"turn":1,"model_a":"x","model_b":"y","order":"ab","winner":"x"}
{"mode":"pairwise","question_id":2,"turn":1,"model_a":"x","model_b":"y","order":"ba","winner":"y"}
{"mode":"pairwise","question_id":3,"turn":1,"model_a":"x","model_b":"y","order":"ab","error":"no verdict"}
{"mode":"pairwise","question_id":3,"turn":1,"model_a":"x","model_b":"y","order":"ba","error":"no verdict"}
J
"$vhost" arena report judgments.jsonl --bootstrap 0 --json > judged.json 2> judged.err || { cat judged.err; exit 1; }
grep -q "2 battles from judgments (1 with the two orders disagreeing, counted as ties; 1 without a verdict skipped; 2 failed judgments)" judged.err || { cat judged.err; exit 1; }
python3 -c 'import json,sys; r={m["model"]: m for m in json.load(open(sys.argv[1]))["models"]}; assert (r["x"]["wins"], r["x"]["ties"], r["y"]["losses"]) == (1, 1, 1), r' judged.json

# Malformed input: named at file and line (or index), exit 2, never a crash.
bad() {  # bad FILE MESSAGE
  local out; out=$("$vhost" arena report "$1" --bootstrap 0 2>&1) && { echo "accepted $1"; exit 1; }
  [ $? = 2 ] || { echo "$1: exit code not 2: $out"; exit 1; }
  grep -qF "$2" <<<"$out" || { echo "$1: wanted '$2', got: $out"; exit 1; }
}
printf '[{"model_a": "a", "model_b": "b", "winner": "a"}]' > bad1.json; bad bad1.json "bad1.json: [0]: winner: 'a' is not model_a, model_b, tie or tie (bothbad)"
printf '{"vote": {"models": ["a"], "vote": "A"}}\n' > bad2.jsonl; bad bad2.jsonl "bad2.jsonl:1: vote.models: expected the two models' names"
printf '{"vote": {"models": ["a", "b"], "vote": "A"}}\n{"vote": {"models": ["a", "b"], "vote": "C"}}\n' > bad3.jsonl
bad bad3.jsonl "bad3.jsonl:2: vote.vote: 'C' is not A, B, tie or bad"
printf '{"vote": \n' > bad4.jsonl; bad bad4.jsonl "bad4.jsonl:1: not valid JSON"
: > empty.jsonl; bad empty.jsonl "empty.jsonl: empty: no battles"
bad /nonexistent.json "/nonexistent.json: cannot open"
printf '{"endpoint": "chat"}\n' > novotes.jsonl; bad novotes.jsonl "no battles to rate"
out=$("$vhost" arena report battles.json --anchor nonsense 2>&1) && { echo "accepted --anchor nonsense"; exit 1; }
grep -q "expected MODEL=RATING" <<<"$out" || { echo "$out"; exit 1; }
# Judge agreement (MT-bench's "GPT-4 agrees with humans"): vhost eval agreement against FastChat's
# own compute_agreement.py on vote files in its format — several experts per question, GPT-4-pair
# votes, ties of both kinds, model pairs in either order, authors (ignored), both turns.
python3 - <<'PY'
import json, random
rng = random.Random(3)
models = ["vicuna-13b", "alpaca-13b", "llama-13b", "gpt-3.5-turbo"]
winners = ["model_a", "model_b", "tie", "tie (bothbad)"]
human, gpt4 = [], []
for q in range(81, 121):
    for turn in (1, 2):
        a, b = rng.sample(models, 2)
        gpt4.append({"question_id": q, "model_a": a, "model_b": b, "winner": rng.choice(winners), "judge": ["gpt-4", "pair-v2"], "turn": turn})
        for e in range(rng.randint(1, 3)):
            x, y = (a, b) if rng.random() < 0.5 else (b, a)
            judge = f"expert_{rng.randint(0, 9)}" if rng.random() < 0.85 else f"author_{e}"
            human.append({"question_id": q, "model_a": x, "model_b": y, "winner": rng.choice(winners), "judge": judge, "turn": turn})
json.dump(human, open("human_judgments.json", "w"))
json.dump(gpt4, open("gpt4_pair_judgments.json", "w"))
PY
for judges in "gpt4-pair human" "human human"; do
  "$py" "$src/tests/interop/fastchat_agreement.py" $judges human_judgments.json gpt4_pair_judgments.json > fc-agree.txt
  "$vhost" eval agreement human_judgments.json gpt4_pair_judgments.json --judges $judges > vh-agree.txt
  diff fc-agree.txt vh-agree.txt || { echo "agreement ($judges) differs from FastChat's compute_agreement.py"; exit 1; }
done
echo "  judge agreement equals compute_agreement.py line for line (gpt4-pair vs human, human vs human):"
sed 's/^/    /' fc-agree.txt
# vhost's own pairwise judgments count as gpt4-pair votes (both orders agreeing, else a tie).
"$vhost" eval agreement judgments.jsonl human_judgments.json --json > vh-own.json
printf '[{"question_id": 1, "model_a": "x", "model_b": "y", "winner": "model_a", "judge": "expert_1"}]' > h1.json
"$vhost" eval agreement judgments.jsonl h1.json --json > vh-one.json
python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); assert r["turn1"]["with_tie"] == {"agree": 1, "total": 1, "ratio": 1.0}, r' vh-one.json
printf '[{"question_id": 1, "model_a": "x", "model_b": "y", "judge": "expert_1"}]' > bad-vote.json
out=$("$vhost" eval agreement bad-vote.json 2>&1) && { echo "accepted a vote without a winner"; exit 1; }
grep -q "bad-vote.json: \[0\]: winner: expected a string" <<<"$out" || { echo "$out"; exit 1; }
out=$("$vhost" eval agreement human_judgments.json --judges human gpt4-pair 2>&1) && { echo "accepted unsupported judges"; exit 1; }
grep -q "supported are gpt4-pair human, and human human" <<<"$out" || { echo "$out"; exit 1; }
echo "arena_fastchat: ok"
