#!/usr/bin/env bash
# The eval stage end to end against a scripted judge with known behaviour: Vicuna scores (the
# longer answer gets 9, the other 6, in either order), single ratings, pairwise verdicts with a
# position bias, an unparseable reply; resuming; in-process answers; `vhost eval report`.
#   eval_stage.sh BUILD_DIR SOURCE_DIR SCRATCH_DIR
set -euo pipefail
source "$(dirname "$0")/lib.sh" "$@"
start_scripted_judge

cat > questions.jsonl <<'Q'
{"question_id": 1, "category": "writing", "turns": ["Write a haiku."]}
{"question_id": 2, "category": "writing", "turns": ["Write a limerick."]}
{"question_id": 3, "category": "math", "turns": ["What is 2+2?", "And 3+3?"], "reference": ["4", "6"]}
{"question_id": 4, "category": "math", "turns": ["What is 5*5?"]}
{"question_id": 5, "category": "generic", "turns": ["NOVERDICT please"]}
Q
answers() {  # answers NAME TEXT... (one per question)
  local name=$1; shift
  local i=0
  for t in "$@"; do
    i=$((i + 1))
    turns="[\"$t\"]"; [ $i -eq 3 ] && turns="[\"$t\", \"$t\"]"
    echo "{\"question_id\": $i, \"answer_id\": \"$name-$i\", \"model_id\": \"$name\", \"choices\": [{\"index\": 0, \"turns\": $turns}]}"
  done > "$name.jsonl"
}
answers long "a long answer one" "a long answer two" "a long answer three" "x" "same"
answers short "short" "short" "short" "a much longer answer" "same"

pipeline() {  # pipeline MODE OUT
  eval_pipeline eval.toml "$1" "$2" short long.jsonl short.jsonl
}

pipeline vicuna out-vicuna
"$vhost" run eval.toml > vicuna.log 2>&1 || { cat vicuna.log; exit 1; }
python3 - out-vicuna/report.json <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
o = r["pairs"][0]["overall"]
assert r["pairs"][0]["model"] == "long" and r["pairs"][0]["baseline"] == "short", r["pairs"][0]
assert (o["win"], o["tie"], o["loss"], o["errors"], o["inconsistent"]) == (3, 0, 1, 1, 0), o
assert o["total_model"] == 33 and o["total_baseline"] == 27, o
assert abs(o["relative_percent"] - 100 * 33 / 27) < 1e-9
assert r["pairs"][0]["categories"]["math"]["loss"] == 1
print(f"  vicuna: {o['win']}/{o['tie']}/{o['loss']}, {o['relative_percent']:.1f}% of the baseline, 1 unparseable")
PY
grep -q '"attempts":3' out-vicuna/judgments.jsonl  # the unparseable reply was asked again twice
grep -q "<svg" out-vicuna/report.html
# The HTML report is a page a person reads: tables as tables, counts on the bars, the judge named.
grep -q "<table><tr><th>category</th>" out-vicuna/report.html || { echo "no HTML table"; exit 1; }
grep -q "<p>Judge: endpoint http://127.0.0.1:$PORT/v1" out-vicuna/report.html || { echo "the judge is not named"; exit 1; }
grep -q 'fill="#fff">3</text>' out-vicuna/report.html || { echo "no count on the win bar"; exit 1; }
if command -v chromium >/dev/null; then
  timeout 60 chromium --headless=new --no-sandbox --disable-gpu --disable-dev-shm-usage --window-size=1000,1200 \
    --screenshot="$scratch/report.png" "file://$scratch/out-vicuna/report.html" >/dev/null 2>&1 || true
  [ -s "$scratch/report.png" ] && echo "  report.html rendered in headless Chromium: $scratch/report.png"
fi
before=$(calls)
"$vhost" run eval.toml > vicuna2.log 2>&1
grep -q "judging: 0 of 10 judgments to make" vicuna2.log || { cat vicuna2.log; exit 1; }
[ "$(calls)" = "$before" ]
"$vhost" eval report --reviews out-vicuna/judgments.jsonl --baseline short > recomputed.md
diff <(sed 's/[[:space:]]*$//' recomputed.md) <(sed 's/[[:space:]]*$//' out-vicuna/report.md)
echo "  resumed without new judge calls; vhost eval report recomputes the same tables"
# Stored judgments belong to their judge: another judge model asks everything again (the old
# verdicts move to judgments.previous.jsonl, the report counts only the new judge's); the same
# judge again asks nothing; retry_errors asks again the two (both orders) that recorded an error.
sed -i 's/^plugin = "openai"$/plugin = "openai"\nmodel = "judge-b"/' eval.toml
"$vhost" run eval.toml > vicuna3.log 2>&1 || { cat vicuna3.log; exit 1; }
grep -q "judging: 10 of 10 judgments to make" vicuna3.log || { cat vicuna3.log; exit 1; }
grep -q "10 stored judgments were made by another judge" vicuna3.log || { cat vicuna3.log; exit 1; }
[ "$(wc -l < out-vicuna/judgments.previous.jsonl)" = 10 ] || { echo "previous judgments not kept"; exit 1; }
[ "$(wc -l < out-vicuna/judgments.jsonl)" = 10 ] || { echo "judgments.jsonl is not the new judge's ten"; exit 1; }
python3 -c "
import json
j = [json.loads(l) for l in open('out-vicuna/judgments.jsonl')]
assert all(x['judge']['model'] == 'judge-b' for x in j), j[0]"
"$vhost" run eval.toml > vicuna4.log 2>&1 || { cat vicuna4.log; exit 1; }
grep -q "judging: 0 of 10 judgments to make" vicuna4.log || { cat vicuna4.log; exit 1; }
before=$(calls)
"$vhost" run eval.toml --set stages.eval.retry_errors=true > vicuna5.log 2>&1 || { cat vicuna5.log; exit 1; }
grep -q "judging: 2 of 10 judgments to make" vicuna5.log || { cat vicuna5.log; exit 1; }
[ "$(calls)" -gt "$before" ] || { echo "retry_errors did not ask the judge"; exit 1; }
[ "$(wc -l < out-vicuna/judgments.jsonl)" = 10 ] || { echo "judgments.jsonl lost or doubled records"; exit 1; }
[ "$(wc -l < out-vicuna/judgments.previous.jsonl)" = 12 ] || { echo "the retried error records were not kept"; exit 1; }
echo "  stored judgments are the judge's own: another judge model re-judges, retry_errors re-asks errors"

pipeline single out-single
"$vhost" run eval.toml > single.log 2>&1 || { cat single.log; exit 1; }
python3 -c "
import json; r = json.load(open('out-single/report.json'))
for m in ('long', 'short'):
    s = r['single'][m]; assert s['mean'] == 7 and s['turns']['2'] == 7 and s['errors'] == 1, s
print('  single: every answer rated 7, turn 2 judged, 1 unparseable per model')"

# Costs only where the price is known: this local judge has none by default (cost_usd null: it was
# charged GPT-4's price), and with prices set each judgment carries its cost.
python3 -c "
import json
j = [json.loads(l) for l in open('out-single/judgments.jsonl')]
assert j and all(x['cost_usd'] is None for x in j), j[0]"
pipeline single out-priced
sed -i 's/^plugin = "openai"$/plugin = "openai"\nprompt_price_per_1k = 0.01\ncompletion_price_per_1k = 0.02/' eval.toml
"$vhost" run eval.toml > priced.log 2>&1 || { cat priced.log; exit 1; }
python3 -c "
import json
j = [json.loads(l) for l in open('out-priced/judgments.jsonl')]
assert j and all(abs(x['cost_usd'] - x['attempts'] * (100 * 0.01 + 10 * 0.02) / 1000) < 1e-12 for x in j), j[0]"
echo "  a judge without a known price costs null, not GPT-4's price; set prices are charged per token"

pipeline pairwise out-pairwise
"$vhost" run eval.toml > pairwise.log 2>&1 || { cat pairwise.log; exit 1; }
python3 -c "
import json; o = json.load(open('out-pairwise/report.json'))['pairs'][0]['overall']
assert (o['win'], o['loss'], o['inconsistent'], o['tie'], o['errors']) == (0, 0, 5, 5, 1), o  # q3 has two turns
print('  pairwise: a judge that always picks the first answer gives only ties, each flagged inconsistent')"

# A judge prompt file with a bad line: the error names the file and line; nothing is judged.
pipeline single out-badprompts
printf '{"name": "single-v1", "system_prompt": "s", "prompt_template": "t"}\n\n{"name": "x"}\n' > prompts.jsonl
echo 'judge_prompts = "prompts.jsonl"' >> eval.toml
if "$vhost" run eval.toml > badprompts.log 2>&1; then cat badprompts.log; exit 1; fi
grep -q 'prompts.jsonl:3: not a judge prompt' badprompts.log || { cat badprompts.log; exit 1; }
[ ! -s out-badprompts/judgments.jsonl ]
echo "  a malformed judge_prompts line is named by file:line"

# FastChat's own judge prompts (../shared fixture), when present.
prompts="$src/../shared/data/judge_prompts.jsonl"
if [ -f "$prompts" ]; then
  for mode in single pairwise; do
    pipeline $mode out-fc-$mode
    echo "judge_prompts = \"$prompts\"" >> eval.toml
    "$vhost" run eval.toml > fc.log 2>&1 || { cat fc.log; exit 1; }
  done
  python3 -c "
import json
s = json.load(open('out-fc-single/report.json'))['single']
assert s['long']['mean'] == 7 and s['long']['turns']['2'] == 7, s
o = json.load(open('out-fc-pairwise/report.json'))['pairs'][0]['overall']
assert o['tie'] == 5 and o['inconsistent'] == 5, o
j = [json.loads(l) for l in open('out-fc-single/judgments.jsonl')]
assert all('error' in x or x['rating'] == 7 for x in j)"
  echo "  FastChat's judge_prompts.jsonl (single-v1, pair-v2, math and multi-turn variants): ok"
else
  echo "  ../shared/data/judge_prompts.jsonl absent: FastChat prompt files not checked"
fi

echo "== in-process answers"
"$vhost" model init --preset tiny --tokenizer-text "$src/docs/plugins.md" --out tiny >/dev/null
cat > answer.toml <<TOML
[pipeline]
name = "answer"
stages = ["eval"]
[backends.cpu]
plugin = "cpu"
threads = 1
[models.toy]
plugin = "llama"
path = "$scratch/tiny"
max_batch = 4
[judges.j]
plugin = "openai"
base_url = "http://127.0.0.1:$PORT/v1"
api_key = "test"
[stages.eval]
questions = "$scratch/questions.jsonl"
answers = ["$scratch/short.jsonl"]
baseline = "short"
limit = 3
max_tokens = 8
out = "$scratch/out-toy"
TOML
"$vhost" run answer.toml > toy.log 2>&1 || { cat toy.log; exit 1; }
grep -q "toy: answering 3 of 3 questions" toy.log
[ "$(wc -l < out-toy/answers/toy.jsonl)" = 3 ]
python3 -c "
import json
for l in open('out-toy/answers/toy.jsonl'):
    a = json.loads(l); assert a['model_id'] == 'toy' and len(a['choices'][0]['turns']) == (2 if a['question_id'] == 3 else 1), a"
"$vhost" run answer.toml > toy2.log 2>&1
# Answers already there are not asked for again (a '! grep' line could never fail under set -e).
if grep -q "answering" toy2.log; then echo "the second run answered again"; cat toy2.log; exit 1; fi

echo "== answers from an OpenAI-compatible endpoint"
cat >> answer.toml <<TOML
[judges.remote]
plugin = "openai"
base_url = "http://127.0.0.1:$PORT/v1"
model = "gpt-3.5"
api_key = "test"
TOML
sed -i 's|^judge = .*||; s|^\[stages.eval\]|[stages.eval]\njudge = "judges.j"\nendpoints = ["judges.remote"]|' answer.toml
"$vhost" run answer.toml > remote.log 2>&1 || { cat remote.log; exit 1; }
grep -q "remote: answering 3 of 3 questions over HTTP" remote.log || { cat remote.log; exit 1; }
python3 -c "
import json
a = [json.loads(l) for l in open('out-toy/answers/remote.jsonl')]
assert len(a) == 3 and all(x['model_id'] == 'remote' for x in a)
assert [len(x['choices'][0]['turns']) for x in sorted(a, key=lambda x: x['question_id'])] == [1, 1, 2]"

echo "== bad input"
echo '{"question_id": 1, "turns": "not a list"}' > bad.jsonl
sed -i "s|^questions = .*|questions = \"$scratch/bad.jsonl\"|" answer.toml
rc=0; "$vhost" run answer.toml > bad.log 2>&1 || rc=$?
[ $rc -eq 2 ] && grep -q "bad.jsonl:1: turns: missing" bad.log || { cat bad.log; exit 1; }
echo "eval_stage: ok"
