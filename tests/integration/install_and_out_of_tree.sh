#!/usr/bin/env bash
# Installs the built vhost into a scratch prefix, then builds examples/third_party_plugin and
# examples/embed against that installation only (find_package(vhost)), installs the plugin
# beside vhost's own and runs both with the installed binaries.
#   install_and_out_of_tree.sh BUILD_DIR SOURCE_DIR SCRATCH_DIR
set -euo pipefail
build=$1 src=$2 scratch=$3
rm -rf "$scratch"
prefix=$scratch/prefix
mkdir -p "$scratch"
export VHOST_PLUGIN_PATH=   # only what is installed counts
gen=()
command -v ninja >/dev/null && gen=(-G Ninja)

echo "== install vhost into $prefix"
cmake --install "$build" --prefix "$prefix" >/dev/null

echo "== build the third-party plugin against the installed SDK"
cmake -S "$src/examples/third_party_plugin" -B "$scratch/plugin-build" "${gen[@]}" \
      -DCMAKE_PREFIX_PATH="$prefix" -DCMAKE_INSTALL_PREFIX="$prefix" >/dev/null
cmake --build "$scratch/plugin-build" >/dev/null
cmake --install "$scratch/plugin-build" >/dev/null
test -f "$prefix/lib/vhost/plugins/vhost_judge_length.so"

echo "== the installed vhost finds its plugins in the install prefix"
"$prefix/bin/vhost" plugins --json > "$scratch/plugins.json"
python3 - "$scratch/plugins.json" "$prefix" <<'PY'
import json, sys, os
data = json.load(open(sys.argv[1])); prefix = os.path.realpath(sys.argv[2])
by = {(p["kind"], p["name"]): p for p in data["plugins"]}
for key in [("judge", "length"), ("backend", "cpu")]:
    p = by.get(key)
    assert p, f"{key} not listed: {data}"
    assert p["error"] == "", p["error"]
    assert p["origin"] == "install prefix", p
    assert os.path.realpath(p["file"]).startswith(prefix), p["file"]
print("plugins ok:", sorted(by))
PY

echo "== run a pipeline with the third-party plugin"
out=$("$prefix/bin/vhost" run "$src/examples/third_party_plugin/pipeline.toml" \
        --set pipeline.work_dir="$scratch/run" --log-level warn)
echo "$out"
grep -q "judges.length: judge plugin 'length' 1.0.0" <<<"$out"
grep -q "^1 2$" <<<"$out"
test -f "$scratch/run/run.json"

echo "== the installed vhost refuses a bad value for the plugin with its position"
if "$prefix/bin/vhost" validate "$src/examples/third_party_plugin/pipeline.toml" --set judges.length.cap=0 2>"$scratch/err"; then
  echo "validate accepted cap=0"; exit 1
fi
grep -q "judges.length.cap: 0 is out of range" "$scratch/err"

echo "== the installed model plugin finds its SentencePiece shim and helper in the prefix"
mv "$build/lib/vhost" "$build/lib/vhost.hidden"   # nothing from the build tree may be used
trap 'mv "$build/lib/vhost.hidden" "$build/lib/vhost" 2>/dev/null || true' EXIT
"$prefix/bin/vhost" model init --preset tiny --out "$scratch/tiny" --tokenizer-text "$src/docs/plugins.md"
"$prefix/bin/vhost" generate "$scratch/tiny" --prompt "Hello" --max-tokens 5 --log-level warn | tee "$scratch/gen.out"
grep -q "5 tokens in" "$scratch/gen.out"
mv "$build/lib/vhost.hidden" "$build/lib/vhost"
trap - EXIT

echo "== build and run the embedding example against the installed library"
cmake -S "$src/examples/embed" -B "$scratch/embed-build" "${gen[@]}" -DCMAKE_PREFIX_PATH="$prefix" >/dev/null
cmake --build "$scratch/embed-build" >/dev/null
(cd "$scratch" && ./embed-build/vhost_embed 1) | tee "$scratch/embed.out"
grep -q "embedded run ok: device=cpu threads=1" "$scratch/embed.out"
echo "install_and_out_of_tree: ok"
