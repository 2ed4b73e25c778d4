// Data preparation through the host: the sharegpt plugin, the prepare stage, `vhost prepare`
// and `vhost template`, with a model instance doing the tokenizing over the plugin ABI.
#include "helpers.hpp"

#if VHOST_HAVE_TORCH

static const fs::path kDemo = fs::path(VHOST_SOURCE_DIR) / "examples" / "data" / "sharegpt_demo.json";

static fs::path prep_model() {
  static fs::path dir = make_tiny_model("prepare-model", 1);
  return dir;
}

TEST_CASE("vhost prepare: the bundled sample, every conversation accounted for", "[prepare][cli]") {
  fs::path out = scratch("prepare-cli") / "out";
  auto r = run_cmd(vhost_cmd("prepare " + kDemo.string() + " --model " + prep_model().string() + " --out " + out.string() +
                             " --max-length 512 --language en --blocked-word 'as an AI language model' --eval-fraction 0.2"));
  INFO(r.out);
  REQUIRE(r.rc == 0);
  CHECK_THAT(r.out, Contains("conversations in          19"));
  auto s = nlohmann::json::parse(read_file(out / "stats.json"));
  std::uint64_t dropped = 0;
  for (auto& [k, v] : s["dropped"].items()) dropped += v.get<std::uint64_t>();
  CHECK(s["conversations_in"].get<std::uint64_t>() == s["conversations_out"].get<std::uint64_t>() + dropped);
  for (const char* reason : {"duplicate", "blocked_words", "language", "unknown_role", "malformed_record", "not_alternating", "empty"})
    CHECK(s["dropped"][reason] == 1);
  CHECK(s["changes"]["html_converted"].get<int>() >= 3);
  CHECK(s["longest_sequence"].get<int>() <= 512);
  CHECK(s["trained_tokens"].get<int>() > 0);
  auto meta = nlohmann::json::parse(read_file(out / "train" / "meta.json"));
  CHECK(meta["template"] == "vicuna_v1.1");  // the model's default
  CHECK(meta["format"] == "vhost-tokens");
  auto cleaned = nlohmann::json::parse(read_file(out / "cleaned.json"));
  CHECK(cleaned.size() == s["sequences"].get<std::size_t>());
}

TEST_CASE("vhost prepare: malformed JSON is an input error at file:line:col", "[prepare][cli][malformed]") {
  fs::path d = scratch("prepare-bad");
  write_file(d / "bad.json", "[\n  {\"id\": \"a\",\n   \"conversations\": [{\"from\": \"human\" \"value\": \"x\"}]}\n]\n");
  auto r = run_cmd(vhost_cmd("prepare " + (d / "bad.json").string() + " --model " + prep_model().string() + " --out " +
                             (d / "out").string()));
  INFO(r.out);
  CHECK(r.rc == 2);
  CHECK_THAT(r.out, Contains((d / "bad.json").string() + ":3:"));
  CHECK_THAT(r.out, Contains("malformed JSON"));
  CHECK_FALSE(fs::exists(d / "out" / "train"));
  r = run_cmd(vhost_cmd("prepare " + (d / "absent.json").string() + " --model " + prep_model().string() + " --out " +
                        (d / "out").string()));
  CHECK(r.rc == 2);
  CHECK_THAT(r.out, Contains("datasets.d.path: " + (d / "absent.json").string() + " does not exist"));
}

TEST_CASE("the prepare stage in a pipeline, a bad template is reported at its line", "[prepare][pipeline][malformed]") {
  fs::path d = scratch("prepare-pipeline");
  std::string toml = "[pipeline]\nstages = [\"prep\"]\nwork_dir = \"" + (d / "runs").string() +
                     "\"\n[models.m]\nplugin = \"llama\"\npath = \"" + prep_model().string() +
                     "\"\nload_weights = false\n[datasets.chats]\nplugin = \"sharegpt\"\npath = \"" + kDemo.string() +
                     "\"\ntemplate = \"mine\"\nmax_length = 512\n[datasets.chats.templates.mine]\nbase = \"vicuna_v1.1\"\n"
                     "system_message = \"Be brief.\"\n[stages.prep]\ntype = \"prepare\"\nout = \"" + (d / "out").string() + "\"\n";
  write_file(d / "p.toml", toml);
  auto r = run_cmd(vhost_cmd("run " + (d / "p.toml").string()));
  INFO(r.out);
  REQUIRE(r.rc == 0);
  auto meta = nlohmann::json::parse(read_file(d / "out" / "train" / "meta.json"));
  CHECK(meta["template"] == "mine");
  auto run = nlohmann::json::parse(read_file(d / "runs" / "run.json"));
  CHECK(run.dump().find("conversations_in") != std::string::npos);

  std::string bad = toml;
  bad.replace(bad.find("template = \"mine\""), 17, "template = \"vicuna\"");
  write_file(d / "bad.toml", bad);
  r = run_cmd(vhost_cmd("run " + (d / "bad.toml").string()));
  CHECK(r.rc == 2);
  CHECK_THAT(r.out, Contains("bad.toml:11:12: datasets.chats.template: unknown conversation template 'vicuna'"));

  bad = toml;
  bad.replace(bad.find("base = \"vicuna_v1.1\""), 20, "style = \"fancy\"");
  write_file(d / "bad2.toml", bad);
  r = run_cmd(vhost_cmd("run " + (d / "bad2.toml").string()));
  CHECK(r.rc == 2);
  CHECK_THAT(r.out, Contains("datasets.chats.templates.mine.style: unknown style 'fancy'"));
}

#endif

TEST_CASE("vhost template render: FastChat's prompt, the trained spans, and bad input", "[template][cli][malformed]") {
  fs::path d = scratch("template-cli");
  write_file(d / "c.json", R"({"id": "x", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}, {"from": "human", "value": "Bye"}]})");
  auto r = run_cmd(vhost_cmd("template render < " + (d / "c.json").string()));
  CHECK(r.rc == 0);
  CHECK(r.out ==
        "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, detailed, "
        "and polite answers to the user's questions. USER: Hi ASSISTANT: Hello!</s>USER: Bye ASSISTANT:\n");
  r = run_cmd(vhost_cmd("template render --mask --template llama-2-chat < " + (d / "c.json").string()));
  CHECK(r.out == "[INST] Hi [/INST] [[Hello! </s>]]<s>[INST] Bye [/INST]\n");
  r = run_cmd(vhost_cmd("template render --json < " + (d / "c.json").string()));
  auto j = nlohmann::json::parse(r.out);
  CHECK(j["segments"].size() > 3);

  write_file(d / "bad.json", R"({"conversations": [{"from": "human", "value": "Hi"}, {"from": "human", "value": "again"}]})");
  r = run_cmd(vhost_cmd("template render < " + (d / "bad.json").string()));
  CHECK(r.rc == 2);
  CHECK_THAT(r.out, Contains("stdin: conversations[1].from: expected a gpt turn"));
  write_file(d / "notjson.json", "{\"conversations\": [");
  r = run_cmd(vhost_cmd("template render < " + (d / "notjson.json").string()));
  CHECK(r.rc == 2);
  CHECK_THAT(r.out, Contains("stdin: byte 20: not JSON"));
  r = run_cmd(vhost_cmd("template render --template nope < " + (d / "c.json").string()));
  CHECK(r.rc == 2);
  CHECK_THAT(r.out, Contains("unknown conversation template 'nope'"));

  write_file(d / "t.toml", "[short]\nbase = \"vicuna_v1.1\"\nsystem_message = \"Be short.\"\n[broken]\nstyle = \"add_colon_two\"\n");
  r = run_cmd(vhost_cmd("template render --templates " + (d / "t.toml").string() + " --template short < " + (d / "c.json").string()));
  CHECK(r.rc == 2);
  CHECK_THAT(r.out, Contains("t.toml: broken.roles: missing"));
  write_file(d / "t2.toml", "[short]\nbase = \"vicuna_v1.1\"\nsystem_message = \"Be short.\"\n");
  r = run_cmd(vhost_cmd("template render --templates " + (d / "t2.toml").string() + " --template short < " + (d / "c.json").string()));
  CHECK(r.rc == 0);
  CHECK(r.out == "Be short. USER: Hi ASSISTANT: Hello!</s>USER: Bye ASSISTANT:\n");
  r = run_cmd(vhost_cmd("template list"));
  CHECK_THAT(r.out, Contains("vicuna_v1.1  roles: USER / ASSISTANT"));
}

#if VHOST_HAVE_TORCH
TEST_CASE("vhost chat: multi-turn with the template, commands, transcript, bad template", "[chat][cli][malformed]") {
  fs::path d = scratch("chat-cli");
  write_file(d / "in.txt", "Hello there\nTell me more\n!!regen\n!!reset\nAgain\n!!exit\nnever read\n");
  std::string cmd = "TMPDIR=" + d.string() + " " + vhost_cmd("chat " + prep_model().string() + " --max-tokens 6 --temperature 0");
  auto r = run_cmd(cmd + " < " + (d / "in.txt").string());
  INFO(r.out);
  REQUIRE(r.rc == 0);
  CHECK_THAT(r.out, Contains("template vicuna_v1.1"));
  CHECK_THAT(r.out, Contains("(conversation cleared)"));
  std::vector<nlohmann::json> turns;
  std::istringstream log(read_file(d / "vhost-chat" / "chat.jsonl"));
  for (std::string line; std::getline(log, line);) turns.push_back(nlohmann::json::parse(line));
  REQUIRE(turns.size() == 4);  // Hello, Tell me more, its regeneration, Again
  CHECK(turns[1]["user"] == "Tell me more");
  CHECK(turns[2]["user"] == "Tell me more");
  CHECK(turns[1]["assistant"] == turns[2]["assistant"]);  // greedy: the regeneration is the same
  CHECK(turns[3]["user"] == "Again");

  r = run_cmd("TMPDIR=" + d.string() + " " + vhost_cmd("chat " + prep_model().string() + " --template nope < /dev/null"));
  CHECK(r.rc == 2);
  CHECK_THAT(r.out, Contains("chat.template: unknown conversation template 'nope'"));
}
#endif
