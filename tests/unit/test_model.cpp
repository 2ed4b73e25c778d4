// The model kind end to end through the host: the llama plugin, its tools, the model-init and
// generate stages, backend wiring, and the CLI commands on top.
#include "helpers.hpp"

#include <sstream>

#if VHOST_HAVE_TORCH

static const fs::path kSharedTok = fs::path(VHOST_SOURCE_DIR) / ".." / "shared" / "models" / "llama2_tokenizer.model";

// A tiny checkpoint shared by the tests of this file.
static fs::path tiny_model() {
  static fs::path dir = make_tiny_model("model-tiny", 3);
  return dir;
}

TEST_CASE("model init writes an HF checkpoint with a tokenizer, generate streams from it", "[model][cli]") {
  fs::path m = tiny_model();
  CHECK(fs::exists(m / "config.json"));
  CHECK(fs::exists(m / "model.safetensors"));
  CHECK(fs::exists(m / "tokenizer.model"));
  auto cfg = nlohmann::json::parse(read_file(m / "config.json"));
  CHECK(cfg["model_type"] == "llama");
  CHECK(cfg["num_key_value_heads"] == 2);

  auto r = run_cmd(vhost_cmd("generate " + m.string() + " --prompt 'Plugins' --max-tokens 7 --seed 5 --temperature 0.7 --log-level warn"));
  INFO(r.out);
  CHECK(r.rc == 0);
  CHECK_THAT(r.out, StartsWith("Plugins"));
  CHECK_THAT(r.out, Contains("7 tokens in"));
  auto again = run_cmd(vhost_cmd("generate " + m.string() + " --prompt 'Plugins' --max-tokens 7 --seed 5 --temperature 0.7 --log-level warn"));
  CHECK(again.out.substr(0, again.out.find("7 tokens")) == r.out.substr(0, r.out.find("7 tokens")));

  CHECK_THAT(r.out, Matches("(.|\n)*7 tokens in [0-9.]+ (ms|s) \\([0-9]+\\.[0-9] tokens/s\\)(.|\n)*"));  // no 5.8e-05 s
  r = run_cmd(vhost_cmd("model init --preset tiny --out " + (scratch("model-notok") / "m").string()));
  CHECK(r.rc == 2);  // named by its flags, not by the plugin tool's fields
  CHECK_THAT(r.out, Contains("give --tokenizer-text FILE (trains a tokenizer on it) or --tokenizer tokenizer.model"));
  // An existing checkpoint is kept unless --overwrite says otherwise.
  const std::string before = read_file(m / "model.safetensors");
  r = run_cmd(vhost_cmd("model init --preset tiny --seed 9 --out " + m.string() + " --tokenizer " + (m / "tokenizer.model").string()));
  CHECK(r.rc == 2);
  CHECK_THAT(r.out, Contains("--out: " + m.string() + " exists; kept (--overwrite replaces it)"));
  CHECK(read_file(m / "model.safetensors") == before);
  r = run_cmd(vhost_cmd("model init --preset huge --out " + (scratch("model-huge") / "m").string() + " --tokenizer-text README.md"));
  CHECK(r.rc == 1);
  CHECK_THAT(r.out, Contains("unknown preset 'huge'"));
  r = run_cmd(vhost_cmd("generate /nonexistent/model --prompt hi"));
  CHECK(r.rc == 2);
  CHECK_THAT(r.out, Contains("models.m.path: /nonexistent/model does not exist"));
  r = run_cmd(vhost_cmd("generate " + scratch("model-empty").string() + " --prompt hi"));
  CHECK(r.rc == 2);
  CHECK_THAT(r.out, Contains("has no config.json and is not a GGUF file"));
}

TEST_CASE("the train stage takes its recipe keys from the model plugin's train-options", "[model][train][malformed]") {
  const std::string m = tiny_model().string();
  fs::path dir = scratch("train-options");
  auto pipeline = [&](const std::string& recipe) {
    write_file(dir / "p.toml", "[pipeline]\nstages = [\"train\"]\n[models.m]\nplugin = \"llama\"\npath = \"" + m +
                                   "\"\n[stages.train]\ndata = \"d\"\nout = \"o\"\n" + recipe);
    return run_cmd(vhost_cmd("validate --print " + (dir / "p.toml").string()));
  };
  // The plugin's defaults fill the stage's table, as if the host declared them.
  auto r = pipeline("lr = 1e-4\n");
  INFO(r.out);
  REQUIRE(r.rc == 0);
  auto resolved = nlohmann::json::parse(r.out.substr(r.out.find('{'), r.out.rfind('}') - r.out.find('{') + 1));
  CHECK(resolved["stages"]["train"]["lr"] == 1e-4);
  CHECK(resolved["stages"]["train"]["batch_size"] == 128);
  CHECK(resolved["stages"]["train"]["target_modules"] == nlohmann::json::array({"q_proj", "v_proj"}));
  // Its ranges, choices and key names are checked at the line, before anything runs.
  r = pipeline("lr = 20.0\nschedule = \"cosinus\"\nepochz = 2\n");
  CHECK(r.rc == 2);
  CHECK_THAT(r.out, Contains("p.toml:9:6: stages.train.lr: 20 is out of range"));
  CHECK_THAT(r.out, Contains("stages.train.schedule"));
  CHECK_THAT(r.out, Contains("cosinus"));
  CHECK_THAT(r.out, Contains("epochz"));
  CHECK_THAT(r.out, Contains("did you mean 'epochs'"));
}

TEST_CASE("CLI shortcuts name the flag a bad value came from, not a hidden pipeline", "[model][cli][malformed]") {
  const std::string m = tiny_model().string();
  // Refused by the flag: at parsing (the stage option's range) or by the plugin's check.
  const std::vector<std::pair<std::string, std::string>> refused = {
      {"serve " + m + " --port 0 --stream-interval 0", "--stream-interval: must be an integer in [1, 256], got '0'"},
      {"serve " + m + " --port 0 --heartbeat 0", "--heartbeat: must be a number in [0.05, 3600], got '0'"},
      {"serve " + m + " --port 0 --decode-dtype int3", "--decode-dtype"},
      {"generate " + m + " --prompt hi --model-option nosuch=1", "--model-option nosuch=1"},
      {"generate /nonexistent/model --prompt hi", "MODEL_DIR /nonexistent/model: models.m.path: /nonexistent/model does not exist"},
      {"prepare /nonexistent/s.json --model " + m + " --out " + scratch("cli-flags").string(), "INPUT /nonexistent/s.json"}};
  for (const auto& [args, message] : refused) {
    auto r = run_cmd(vhost_cmd(args));
    INFO(args);
    INFO(r.out);
    CHECK(r.rc == 2);
    CHECK_THAT(r.out, Contains(message));
    CHECK_THAT(r.out, !Contains("vhost serve:") && !Contains("vhost generate:") && !Contains("vhost prepare:"));
  }
  // A prompt is the user's text: no ${NAME} expansion, no TOML quoting to get wrong.
  // (TMPDIR its own: the shortcut's work folder, $TMPDIR/vhost-generate, is not shared with tests
  // running beside it.)
  const fs::path tmp = scratch("cli-prompt-text");
  auto r = run_cmd("TMPDIR=" + tmp.string() + " " +
                   vhost_cmd("generate " + m + " --prompt '${HOME} \"q\" \\ $$' --max-tokens 1 --temperature 0"));
  CHECK(r.rc == 0);
  INFO(r.out);
  std::string line = read_file(tmp / "vhost-generate" / "generate.jsonl");
  CHECK(nlohmann::json::parse(line.substr(0, line.find('\n')))["prompt"] == "${HOME} \"q\" \\ $$");
}

TEST_CASE("sampling parameters: one range for the CLI flags and the pipeline stages", "[model][cli][malformed]") {
  const std::string m = tiny_model().string();
  // CLI flags are named as flags, exit 2, before anything loads.
  const std::vector<std::pair<std::string, std::string>> refused = {
      {"generate " + m + " --prompt hi --temperature 3", "--temperature: must be a number in [0, 2], got '3'"},
      {"generate " + m + " --prompt hi --top-p 0", "--top-p: must be a number in (0, 1], got '0'"},
      {"generate " + m + " --prompt hi --max-tokens 0", "--max-tokens"},
      {"chat " + m + " --temperature 2.5", "--temperature: must be a number in [0, 2], got '2.5'"},
      {"chat " + m + " --top-p nan", "--top-p: must be a number in (0, 1]"}};
  for (const auto& [args, message] : refused) {
    auto r = run_cmd(vhost_cmd(args));
    INFO(args);
    CHECK(r.rc == 2);
    CHECK_THAT(r.out, Contains(message));
  }
  // The same ranges in a pipeline (they were 0..100 in generate and chat, 0..2 in eval and the API).
  fs::path dir = scratch("sampling-ranges");
  write_file(dir / "p.toml", "[pipeline]\nstages = [\"generate\", \"chat\"]\n[models.m]\nplugin = \"llama\"\npath = \"" + m +
                                 "\"\n[stages.generate]\nprompts = [\"a\"]\ntemperature = 5.0\ntop_k = -2\n"
                                 "[stages.chat]\ntop_p = 0.0\nrepetition_penalty = 0.0\n");
  auto r = run_cmd(vhost_cmd("validate " + (dir / "p.toml").string()));
  CHECK(r.rc == 2);
  CHECK_THAT(r.out, Contains("stages.generate.temperature: 5 is out of range: must be between 0 and 2"));
  CHECK_THAT(r.out, Contains("stages.generate.top_k: -2 is out of range: must be between -1 and"));
  CHECK_THAT(r.out, Contains("stages.chat.top_p: 0 is out of range: must be greater than 0 and at most 1"));
  CHECK_THAT(r.out, Contains("stages.chat.repetition_penalty: 0 is out of range: must be greater than 0 and at most 10"));
  // top_k = -1 means all, as in the API (vLLM's spelling), and generates.
  r = run_cmd(vhost_cmd("generate " + m + " --prompt hi --top-k -1 --temperature 1 --seed 3 --max-tokens 3 --log-level warn"));
  INFO(r.out);
  CHECK(r.rc == 0);
}

TEST_CASE("tokenizer commands: encode, decode, train, malformed input", "[model][cli][tokenizer]") {
  fs::path dir = scratch("tok-cli");
  auto r = run_cmd(vhost_cmd("tokenizer train --input " + std::string(VHOST_SOURCE_DIR) + "/docs/pipelines.md --vocab 300 --out " +
                             dir.string()));
  CHECK(r.rc == 1);  // more distinct characters than pieces: SentencePiece's reason comes through
  CHECK_THAT(r.out, Contains("Vocabulary size is smaller than required_chars"));
  r = run_cmd(vhost_cmd("tokenizer train --input " + std::string(VHOST_SOURCE_DIR) + "/docs/pipelines.md --vocab 400 --out " +
                        dir.string()));
  INFO(r.out);
  REQUIRE(r.rc == 0);
  CHECK(fs::exists(dir / "tokenizer.model"));
  r = run_cmd("printf 'stages run' | " + vhost_cmd("tokenizer encode --model " + dir.string() + " --bos"));
  REQUIRE(r.rc == 0);
  auto ids = nlohmann::json::parse(r.out);
  CHECK(ids[0] == 1);
  r = run_cmd("echo '" + ids.dump() + "' | " + vhost_cmd("tokenizer decode --model " + (dir / "tokenizer.model").string()));
  CHECK(r.out == "stages run");

  // --jsonl: one JSON string a line in, one array of ids a line out, each as encoding it alone.
  r = run_cmd("printf '\"stages run\"\\n\"a\\\\tb\"\\n' | " + vhost_cmd("tokenizer encode --jsonl --model " + dir.string()));
  INFO(r.out);
  REQUIRE(r.rc == 0);
  {
    std::istringstream lines(r.out);
    std::string one, two;
    std::getline(lines, one);
    std::getline(lines, two);
    CHECK(nlohmann::json::parse(one) == nlohmann::json(std::vector<int>(ids.begin() + 1, ids.end())));
    auto tab = run_cmd("printf 'a\\tb' | " + vhost_cmd("tokenizer encode --model " + dir.string()));
    CHECK(nlohmann::json::parse(two) == nlohmann::json::parse(tab.out));
  }
  r = run_cmd("printf '\"ok\"\\n5\\n' | " + vhost_cmd("tokenizer encode --jsonl --model " + dir.string()));
  CHECK(r.rc == 2);
  CHECK_THAT(r.out, Contains("stdin:2: expected a JSON string, got number"));
  r = run_cmd("printf '\"ok\\n' | " + vhost_cmd("tokenizer encode --jsonl --model " + dir.string()));
  CHECK(r.rc == 2);
  CHECK_THAT(r.out, Contains("stdin:1: not a JSON string"));

  r = run_cmd("echo '[1, \"x\"]' | " + vhost_cmd("tokenizer decode --model " + dir.string()));
  CHECK(r.rc == 2);
  CHECK_THAT(r.out, Contains("stdin: element 1 is not an integer token id"));
  r = run_cmd("echo '[1, 99999]' | " + vhost_cmd("tokenizer decode --model " + dir.string()));
  CHECK(r.rc == 1);
  CHECK_THAT(r.out, Contains("token id 99999 is outside the vocabulary"));
  r = run_cmd("echo hi | " + vhost_cmd("tokenizer encode --model " + (dir / "nope.model").string()));
  CHECK(r.rc == 1);
  CHECK_THAT(r.out, Contains("nope.model: cannot open tokenizer model"));

  if (!fs::exists(kSharedTok)) {
    WARN("SKIP: the LLaMA-2 part: ../shared/models/llama2_tokenizer.model is absent");
    return;
  }
  r = run_cmd("printf 'Hello world' | " + vhost_cmd("tokenizer encode --model " + kSharedTok.string()));
  CHECK(r.out == "[15043,3186]\n");
}

TEST_CASE("GGUF: stories260K through the plugin, and converted to HF layout", "[model][cli][gguf]") {
  fs::path gguf = fs::path(VHOST_SOURCE_DIR) / ".." / "shared" / "models" / "stories260K.gguf";
  if (!fs::exists(gguf)) {
    WARN("SKIP: ../shared/models/stories260K.gguf is absent");
    return;
  }
  const std::string expected =
      "Once upon a time, there was a little girl named Lily. She loved to play outside in the park. One day, "
      "she saw a big, red ball. She wanted to play with it, but it was too high.\nLily\n60 tokens";
  auto r = run_cmd(vhost_cmd("generate " + gguf.string() + " --prompt 'Once upon a time' --max-tokens 60 --log-level warn"));
  INFO(r.out);
  CHECK_THAT(r.out, StartsWith(expected));

  fs::path hf = scratch("gguf-convert") / "hf";
  r = run_cmd(vhost_cmd("model convert " + gguf.string() + " " + hf.string()));
  INFO(r.out);
  REQUIRE(r.rc == 0);
  for (const char* f : {"config.json", "model.safetensors", "tokenizer.model"}) CHECK(fs::exists(hf / f));
  r = run_cmd(vhost_cmd("generate " + hf.string() + " --prompt 'Once upon a time' --max-tokens 60 --log-level warn"));
  CHECK_THAT(r.out, StartsWith(expected));
  r = run_cmd("printf 'Lily' | " + vhost_cmd("tokenizer encode --model " + gguf.string()));
  auto from_gguf = r.out;
  r = run_cmd("printf 'Lily' | " + vhost_cmd("tokenizer encode --model " + hf.string()));
  CHECK(r.out == from_gguf);

  // The converted folder through the independent Python reference: same greedy continuation.
  r = run_cmd("/usr/bin/python3 " + std::string(VHOST_SOURCE_DIR) + "/tests/reference/llama_reference.py " +
              hf.string() + " '[[1, 403, 407, 261, 378]]'");
  REQUIRE(r.rc == 0);
  auto logits = nlohmann::json::parse(r.out)[0].back();
  std::size_t best = 0;
  for (std::size_t i = 1; i < logits.size(); ++i)
    if (logits[i].get<double>() > logits[best].get<double>()) best = i;
  auto first = run_cmd(vhost_cmd("generate " + hf.string() + " --prompt 'Once upon a time' --max-tokens 1 --log-level warn"));
  r = run_cmd("echo '[" + std::to_string(best) + "]' | " + vhost_cmd("tokenizer decode --model " + hf.string()));
  CHECK_THAT(first.out, StartsWith("Once upon a time" + r.out));

  // And back to GGUF: the same text again, from a file vhost wrote.
  fs::path back = hf.parent_path() / "back.gguf";
  r = run_cmd(vhost_cmd("model convert " + hf.string() + " " + back.string()));
  INFO(r.out);
  REQUIRE(r.rc == 0);
  r = run_cmd(vhost_cmd("generate " + back.string() + " --prompt 'Once upon a time' --max-tokens 60 --log-level warn"));
  CHECK_THAT(r.out, StartsWith(expected));
  r = run_cmd(vhost_cmd("model convert /nonexistent " + (hf.parent_path() / "x").string()));
  CHECK(r.rc == 2);
  CHECK_THAT(r.out, Contains("in: /nonexistent does not exist"));
  // Mistakes that used to write an extensionless GGUF, or fail with "internal error" leaving OUT.tmp.
  r = run_cmd(vhost_cmd("model convert " + hf.string() + " " + (hf.parent_path() / "noext").string()));
  CHECK(r.rc == 2);
  CHECK_THAT(r.out, Contains("an HF folder converts to a GGUF file, whose name ends in .gguf"));
  CHECK_FALSE(fs::exists(hf.parent_path() / "noext"));
  r = run_cmd(vhost_cmd("model convert " + back.string() + " " + back.string()));
  CHECK(r.rc == 2);
  CHECK_THAT(r.out, Contains("is the input itself"));
  CHECK_FALSE(fs::exists(back.string() + ".tmp"));
  r = run_cmd(vhost_cmd("model convert " + back.string() + " " + hf.string()));
  CHECK(r.rc == 2);
  CHECK_THAT(r.out, Contains("exists; kept (--overwrite replaces it)"));
  r = run_cmd(vhost_cmd("model convert " + back.string() + " " + hf.string() + " --overwrite"));
  CHECK(r.rc == 0);
}

TEST_CASE("HF -> GGUF -> HF keeps weights and tokenizer exactly", "[model][cli][gguf]") {
  fs::path dir = scratch("gguf-roundtrip");
  auto r = run_cmd(vhost_cmd("model convert " + tiny_model().string() + " " + (dir / "m.gguf").string()));
  INFO(r.out);
  REQUIRE(r.rc == 0);
  r = run_cmd(vhost_cmd("model convert " + (dir / "m.gguf").string() + " " + (dir / "hf").string()));
  REQUIRE(r.rc == 0);
  CHECK(read_file(dir / "hf" / "model.safetensors") == read_file(tiny_model() / "model.safetensors"));
  auto a = run_cmd(vhost_cmd("generate " + tiny_model().string() + " --prompt 'a b' --max-tokens 12 --log-level warn"));
  auto b = run_cmd(vhost_cmd("generate " + (dir / "m.gguf").string() + " --prompt 'a b' --max-tokens 12 --log-level warn"));
  CHECK(a.out.substr(0, a.out.find("12 tokens")) == b.out.substr(0, b.out.find("12 tokens")));
  r = run_cmd("printf 'stages run 42' | " + vhost_cmd("tokenizer encode --model " + (dir / "m.gguf").string()));
  auto c = run_cmd("printf 'stages run 42' | " + vhost_cmd("tokenizer encode --model " + tiny_model().string()));
  CHECK(r.out == c.out);
}

TEST_CASE("a model names its backend, the host resolves and creates it first", "[model][pipeline]") {
  vh::Host host(only_dirs({VHOST_BUILD_PLUGIN_DIR}));
  std::string base = "[pipeline]\nstages = [\"generate\"]\nwork_dir = \"" + (scratch("model-pipe") / "run").string() +
                     "\"\n[backends.cpu]\nplugin = \"cpu\"\nthreads = 1\n[models.m]\nplugin = \"llama\"\npath = \"" +
                     tiny_model().string() + "\"\n";
  std::ostringstream out;
  vh::RunOptions ro;
  ro.out = &out;
  // No backend named: the only one is used.
  auto p = host.load_string(base + "[stages.generate]\nprompts = [\"a\", \"longer prompt here\"]\nmax_tokens = 4\n", "m.toml");
  CHECK(p.resolved()["models"]["m"]["backend"] == "backends.cpu");
  auto r = host.run(p, ro);
  auto reply = r.stages.at(0).output;
  REQUIRE(reply["choices"].size() == 2);
  CHECK(reply["usage"]["completion_tokens"] == 8);
  CHECK(fs::exists(p.work_dir() / "generate.jsonl"));

  auto msg = config_error_of([&] { host.load_string(base + "backend = \"gpu\"\n[stages.generate]\nprompts = [\"a\"]\n", "m.toml"); });
  CHECK_THAT(msg, Contains("m.toml:10:11: models.m.backend: no [backends.gpu] is declared"));
  msg = config_error_of([&] {
    host.load_string(base + "[backends.cpu2]\nplugin = \"cpu\"\n[stages.generate]\nprompts = [\"a\"]\n", "m.toml");
  });
  CHECK_THAT(msg, Contains("models.m.backend: several backends are declared"));
  msg = config_error_of([&] { host.load_string(base + "[stages.generate]\nprompts = [\"a\"]\ntemperature = -1\n", "m.toml"); });
  CHECK_THAT(msg, Contains("stages.generate.temperature: -1 is out of range"));
  msg = config_error_of([&] { host.load_string(base + "dtype = \"float8\"\n[stages.generate]\nprompts = [\"a\"]\n", "m.toml"); });
  CHECK_THAT(msg, Contains("models.m.dtype: \"float8\" is not one of"));
  msg = config_error_of([&] { host.load_string(base + "decode_dtype = \"int8\"\n[stages.generate]\nprompts = [\"a\"]\n", "m.toml"); });
  CHECK_THAT(msg, Contains("models.m.decode_dtype: \"int8\" is not one of"));

  // Refused by the plugin at run time: an empty prompt list.
  auto empty = host.load_string(base + "[stages.generate]\nprompts = []\n", "m.toml");
  CHECK_THAT(error_of([&] { host.run(empty, ro); }), Contains("'prompts' is empty (generate failed, model plugin 'llama'"));
  // bfloat16 decoding: with a bfloat16 kernel (x86 with AVX2 or better) it generates; elsewhere it
  // warns and decodes in float32.
  auto bf = host.load_string(base + "decode_dtype = \"bfloat16\"\n[stages.generate]\nprompts = [\"a\", \"b c\"]\nmax_tokens = 4\n",
                             "m.toml");
  auto bf_reply = host.run(bf, ro).stages.at(0).output;
  CHECK(bf_reply["usage"]["completion_tokens"] == 8);
}

TEST_CASE("the model-init stage creates a checkpoint once", "[model][pipeline]") {
  vh::Host host(only_dirs({VHOST_BUILD_PLUGIN_DIR}));
  fs::path dir = scratch("model-init-stage");
  std::string toml = "[pipeline]\nstages = [\"model-init\"]\nwork_dir = \"" + dir.string() +
                     "\"\n[stages.model-init]\nout = \"" + (dir / "m").string() + "\"\ntokenizer_text = \"" +
                     std::string(VHOST_SOURCE_DIR) + "/docs/pipelines.md\"\n";
  std::ostringstream out;
  vh::RunOptions ro;
  ro.out = &out;
  CHECK(host.run(host.load_string(toml), ro).stages.at(0).output["created"] == true);
  CHECK(host.run(host.load_string(toml), ro).stages.at(0).output["created"] == false);
  CHECK_THAT(config_error_of([&] { host.load_string(toml + "preset = 7\n"); }),
             Contains("stages.model-init.preset: expected a string"));

  // The stage finds its model plugin on the pipeline's own plugin_dirs, like instances do.
  vh::Host bare(only_dirs({}));
  std::string via_dirs = "[pipeline]\nstages = [\"model-init\"]\nwork_dir = \"" + dir.string() +
                         "\"\nplugin_dirs = [\"" + std::string(VHOST_BUILD_PLUGIN_DIR) + "\"]\n[stages.model-init]\nout = \"" +
                         (dir / "m2").string() + "\"\ntokenizer_text = \"" + std::string(VHOST_SOURCE_DIR) +
                         "/docs/pipelines.md\"\n";
  CHECK(bare.run(bare.load_string(via_dirs), ro).stages.at(0).output["created"] == true);
  CHECK_THAT(error_of([&] { bare.run(bare.load_string(toml + "overwrite = true\n"), ro); }),
             Contains("no model plugin on the search path"));
}
#endif
