#!/usr/bin/env bash
# `vhost prepare --rules fastchat` against FastChat's own data scripts (fschat 0.2.36:
# clean_sharegpt, optional_clean --skip-lang ko --reduce-rep, split_long_conversation,
# filter_wrong_format; tests/interop/fastchat_data.py runs them), on an HTML ShareGPT file written
# here with each rule's cases: what each step drops, counted per reason, and the segments kept
# (their ids and numbers of turns) are equal. The language filter is compared where
# polyglot/pycld2/PyICU install.
# Then the default rules on the same file, and a malformed rules value. Skips (CTest) where the
# interop venv cannot be made.
#   fastchat_data.sh BUILD_DIR SOURCE_DIR SCRATCH_DIR
set -euo pipefail
source "$(dirname "$0")/lib.sh" "$@"
rc=0; py=$("$src/scripts/interop-env.sh" "$build/venv-interop" | tail -1) || rc=$?
[ $rc = 0 ] || { [ $rc = 3 ] && { echo "SKIP: the interop venv cannot be made here"; exit 0; }; exit $rc; }

"$vhost" model init --preset tiny --tokenizer-text "$src/docs/plugins.md" --out model > init.log 2>&1 || { cat init.log; exit 1; }
python3 - in.json <<'PY'
import json, sys
def conv(id, *turns, **extra):
    d = {"id": id, "conversations": [{"from": f, "value": v} for f, v in turns]}
    d.update(extra)
    return d
H, G = "human", "gpt"
q = "Tell me about the history of the river and the towns along it in a few sentences please"
a = "The river has run through the valley for thousands of years and towns grew on its banks over time"
code = '<p>Use slicing:</p><pre><code class="language-python">xs[::-1]\n</code></pre><p>or <code>reversed(xs)</code>.</p>'
recs = [
    conv("ok1", (H, "<p>How do I reverse a list in Python?</p>"), (G, code)),
    conv("short1", (H, "What is the capital of France, and why?")),                       # one turn: too short
    conv("lead1", (G, "<p>Hello! How can I help?</p>"), (H, "Explain photosynthesis briefly."),
         (G, "<p>Plants turn light, water and carbon dioxide into sugar and oxygen.</p>")),  # leading gpt turn goes
    conv("trail1", (H, "Name three primary colours."), (G, "<p>Red, yellow and blue.</p>"), (H, "And secondary ones?")),
    conv("roles1", ("user", "Name three primary colours please."), ("assistant", "Red, yellow and blue.")),  # too short
    conv("roles2", (H, "Name three primary colours please."), (G, "<p>Red, yellow and blue.</p>"),
         ("user", "And the secondary ones?"), (G, "<p>Green, orange and purple.</p>")),      # wrong format
    conv("gptgpt", (G, "<p>Hi</p>"), (G, "<p>Anyone there?</p>"), (H, "Yes, I am here now.")),
    conv("block1", (H, "Who made you?"), (G, "<p>I was trained by OpenAI as a language model.</p>")),
    conv("block2", (H, "Are you ChatGPT or something else?"), (G, "<p>I am an assistant that answers questions.</p>")),
    conv("empty1", (H, "Give me a haiku about autumn."), (G, "<p>Red leaves drift and fall, the cold wind hums a low song.</p>"),
         (H, "Another one?"), (G, ""), (H, "Hello?"), (G, "<p>Sorry!</p>")),               # cut at the empty answer
    conv("zwsp1", (H, "Say something kind to me today."), (G, "<p>You are doing great, keep going.</p>"),
         (H, "More please, friend."), (G, "\u200bYou matter a lot.")),                     # unprintable first character
    conv("nbsp1", (H, " \u00a0What is two plus two equal to?"), (G, "Two plus two is four.")),  # stripped as Python does
    conv("tiny1", (H, "hi"), (G, "hello")),
    conv("cp16", (H, "ééééééé"), (G, "ééééééééé")),   # 16 code points (32 bytes): kept
    conv("cp15", (H, "ééééééé"), (G, "éééééééé")),    # 15: too short
    conv("ok1", (H, "A different question with the same id as before."), (G, "<p>A different answer to it, long enough.</p>")),
    conv("tiny1", (H, "What does a reused id of a dropped one do?"), (G, "<p>It is kept: only kept ids count.</p>")),
    conv("dup1", (H, "<p>How do I reverse a list in Python?</p>"), (G, code), (H, "Thanks, and for a string?"),
         (G, "<p>The same slicing works.</p>")),                                            # first pair seen
    conv("plug1", (H, "Search the web for the weather in Paris."), (G, "<p>It is sunny in Paris today.</p>"), plugins=["weather"]),
    conv("plugnull", (H, "What colour is the clear daytime sky?"), (G, "<p>It is blue on a clear day.</p>"), plugins=None),
    conv("ko1", (H, "한국어로 대답해 주세요. 오늘 날씨가 어떻습니까? 서울의 날씨를 알려 주세요."),
         (G, "<p>오늘 서울은 맑고 따뜻합니다. 오후에는 구름이 조금 있을 수 있습니다. 좋은 하루 보내세요.</p>")),
    conv("rep1", (H, "Write a big number for me please."), (G, "<p>Here it is: 1000000000 exactly.</p>")),
    conv("sys1", ("system", "You are helpful."), (H, "What is the boiling point of water?"), (G, "<p>100 degrees Celsius at sea level.</p>")),
    conv("list1", (H, "Give me steps to make tea."),
         (G, "<p>First:</p><ol><li>Boil the water.</li></ol><p>Then:</p><ol><li>Steep the tea leaves.</li></ol>")),
    conv("list2", (H, "Give me steps to make coffee."), (G, "<p>Steps:</p><ol><li>Grind the beans.</li><li>Brew them slowly.</li></ol>")),
    conv("split1", *[t for k in range(6) for t in ((H, f"{q} {k}"), (G, f"{a} {k}"))]),
    conv("bigfirst", (H, " ".join([q] * 10)), (G, " ".join([a] * 10)), (H, "Short question here?"), (G, "Short answer here.")),
    conv("biglast", (H, "Short question here, number two?"), (G, "Short answer here, number two."),
         (H, " ".join([q] * 10)), (G, " ".join([a] * 10))),
    conv("bigonly", (H, " ".join([q] * 12)), (G, " ".join([a] * 12))),
]
json.dump(recs, open(sys.argv[1], "w"), indent=1, ensure_ascii=False)
PY

langs=(--skip-lang ko); ours_langs=(--skip-language ko)
"$py" -c "import polyglot.detect" 2>/dev/null || { echo "  polyglot/pycld2/PyICU are not installed: the language filter is not compared"; langs=(); ours_langs=(); }
"$py" "$src/tests/interop/fastchat_data.py" in.json model/tokenizer.model 512 "${langs[@]}" --reduce-rep > fc.json 2> fc.log || { cat fc.log; exit 1; }
"$vhost" prepare in.json --model model --out data --max-length 512 --rules fastchat "${ours_langs[@]}" --reduce-rep > prep.log 2>&1 || { cat prep.log; exit 1; }
python3 - fc.json data/stats.json data/cleaned.json <<'PY'
import json, sys
fc, st, cleaned = (json.load(open(f)) for f in sys.argv[1:4])
d, seg = st["dropped"], st["segments_dropped"]
# FastChat's counter -> vhost's reason
pairs = [("cnt_too_short", "too_short"), ("cnt_wrong_format", "not_alternating"), ("cnt_blocked_words", "blocked_words"),
         ("cnt_id_duplication", "id_duplicate"), ("cnt_value_duplication", "duplicate"), ("cnt_plugin", "plugins")]
for theirs, ours in pairs:
    assert fc["clean"][theirs] == d[ours], (theirs, fc["clean"][theirs], ours, d[ours])
    assert d[ours] > 0, f"the input has no case of {ours}"
assert fc["clean"]["cnt_parser_error"] == 0
assert fc["after_clean"] == st["conversations_in"] - sum(d[o] for _, o in pairs), (fc["after_clean"], d)
for k in ("language", "repeated_digits"):
    if k in fc:
        assert fc[k] == d[k] and d[k] > 0, (k, fc[k], d[k])
assert fc["split_empty_segment"] == seg["split_empty_segment"] > 0, (fc, seg)
assert fc["wrong_list_indices"] == seg["wrong_list_indices"] > 0, (fc, seg)
ours = {r["id"]: len(r["conversations"]) for r in cleaned}  # segment id -> its turns
assert ours == fc["segments"], (ours, fc["segments"])
assert seg["split_lost_last_pair"] > 0 and any(i.startswith("split1_") and i != "split1_0" for i in ours), (seg, ours)
print(f"  FastChat's scripts and vhost --rules fastchat: {fc['in']} in, the same drops per reason "
      f"({', '.join(f'{o} {d[o]}' for _, o in pairs)}, language {d['language']}, repeated_digits {d['repeated_digits']}), "
      f"the same {len(ours)} segments kept ({seg['wrong_list_indices']} with restarted list numbering dropped, "
      f"{seg['split_empty_segment']} empty and {seg['split_lost_last_pair']} lost last pairs as FastChat's split does)")
PY
# The default rules on the same file: the system turn kept as such, roles user/assistant read.
"$vhost" prepare in.json --model model --out data-vhost --max-length 512 > prep-vhost.log 2>&1 || { cat prep-vhost.log; exit 1; }
python3 - data-vhost/stats.json <<'PY'
import json, sys
st = json.load(open(sys.argv[1]))
assert st["rules"] == "vhost" and st["dropped"]["id_duplicate"] == 0 and st["dropped"]["plugins"] == 0, st["dropped"]
PY
# A rules value that is not one: the plugin names the option and the choices (exit 2).
rc=0; "$vhost" prepare in.json --model model --out data-bad --rules fastchat2 > bad.log 2>&1 || rc=$?
[ "$rc" = 2 ] && grep -q "rules" bad.log && grep -q "fastchat" bad.log && [ ! -e data-bad/train ] || { echo "--rules fastchat2: exit $rc"; cat bad.log; exit 1; }
echo "fastchat_data: ok"
