#!/usr/bin/env bash
# FastChat's own gen_api_answer.py (fschat 0.2.36, with the openai 0.28 client it was written
# for) answers an MT-bench-style question file through `vhost serve` (--openai-api-base); the
# answer file it writes is graded by vhost's eval stage (single, a scripted judge), and
# FastChat's show_result.py reads the judgments with the same means as vhost's report. Skips
# (CTest) where the venvs cannot be made.
#   fastchat_api_answer.sh BUILD_DIR SOURCE_DIR SCRATCH_DIR
set -euo pipefail
source "$(dirname "$0")/lib.sh" "$@"
rc=0; fpy=$("$src/scripts/interop-env.sh" "$build/venv-fastchat-api" fastchat-api | tail -1) || rc=$?
[ $rc = 0 ] || { [ $rc = 3 ] && { echo "SKIP: the fastchat-api venv cannot be made here"; exit 0; }; exit $rc; }
rc=0; py=$("$src/scripts/interop-env.sh" "$build/venv-interop" | tail -1) || rc=$?
[ $rc = 0 ] || { [ $rc = 3 ] && { echo "SKIP: the interop venv cannot be made here"; exit 0; }; exit $rc; }

"$vhost" model init --preset tiny --tokenizer-text "$src/docs/plugins.md" --out tiny > init.log 2>&1 || { cat init.log; exit 1; }
"$vhost" serve tiny --port 0 --threads 2 --api-key sesame > serve.log 2>&1 &
SERVE=$!
start_scripted_judge  # sets PORT, kills it on exit
trap 'kill $SPID $SERVE 2>/dev/null || true' EXIT
VPORT=$(port_of serve.log $SERVE)
mkdir -p data/mini
cat > data/mini/question.jsonl <<'Q'
{"question_id": 81, "category": "writing", "turns": ["Write a short note to a friend.", "Now make it rhyme."]}
{"question_id": 111, "category": "math", "turns": ["What is 3 times 4?", "And 5 times 6?"]}
{"question_id": 131, "category": "extraction", "turns": ["Name the colours in: red car, blue sky."]}
Q
# As FastChat's docs run it (cwd holds data/BENCH/question.jsonl); a failed request would be
# retried for minutes and written as $ERROR$, so the run is bounded and the file checked.
OPENAI_API_KEY=sesame timeout 300 "$fpy" -m fastchat.llm_judge.gen_api_answer --bench-name mini --model tiny \
  --openai-api-base "http://127.0.0.1:$VPORT/v1" --max-tokens 16 --parallel 2 --answer-file answers/tiny.jsonl \
  > gen.log 2>&1 || { cat gen.log serve.log; exit 1; }
python3 - answers/tiny.jsonl data/mini/question.jsonl <<'PY'
import json, sys
ans = [json.loads(l) for l in open(sys.argv[1])]
qs = {q["question_id"]: q for q in map(json.loads, open(sys.argv[2]))}
assert sorted(a["question_id"] for a in ans) == sorted(qs), ans
for a in ans:
    turns = a["choices"][0]["turns"]
    assert a["model_id"] == "tiny" and len(turns) == len(qs[a["question_id"]]["turns"]), a
    assert all(isinstance(t, str) and "$ERROR$" not in t for t in turns), a
# The random model samples (gen_api_answer's temperatures): a turn may be empty when it draws its
# end-of-sequence token first (seen once in a full ctest run, 2026-12-06), but not every one.
assert sum(len(t) for a in ans for t in a["choices"][0]["turns"]) > 0, ans
print(f"  gen_api_answer.py through vhost serve: {len(ans)} answers, {sum(len(a['choices'][0]['turns']) for a in ans)} turns")
PY
if grep -E '\[error\]' serve.log; then echo "the server logged internal errors"; exit 1; fi
# The answer file graded by vhost (single), FastChat's show_result.py on the judgments.
cp data/mini/question.jsonl questions.jsonl
eval_pipeline eval.toml single out "" answers/tiny.jsonl
"$vhost" run eval.toml > eval.log 2>&1 || { cat eval.log; exit 1; }
"$py" "$src/tests/interop/fastchat_show_result.py" single out/model_judgment/*_single.jsonl > fc.json
python3 - out/report.json fc.json <<'PY'
import json, sys
ours, theirs = json.load(open(sys.argv[1]))["single"]["tiny"], json.load(open(sys.argv[2]))
assert ours["judged"] == 5 and ours["errors"] == 0, ours
assert abs(ours["turns"]["1"] - theirs["turn1"]["tiny"]) < 1e-9 and abs(ours["mean"] - theirs["average"]["tiny"]) < 1e-9, (ours, theirs)
print(f"  graded by vhost eval, read by show_result.py: mean {ours['mean']:.3g} in both")
PY
kill -TERM $SERVE; wait $SERVE || true
echo "fastchat_api_answer: ok"
