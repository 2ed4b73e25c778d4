// The vhost executable: exit codes, messages, the report line.
#include "helpers.hpp"

TEST_CASE("vhost version and usage errors", "[cli]") {
  auto r = run_cmd(vhost_cmd("version"));
  CHECK(r.rc == 0);
  CHECK_THAT(r.out, Contains("plugin ABI 1.7"));
  r = run_cmd(vhost_cmd("frobnicate"));
  CHECK(r.rc == 2);
  r = run_cmd(vhost_cmd("run"));
  CHECK(r.rc == 2);
  CHECK_THAT(r.out, Contains("file is required"));
  r = run_cmd(vhost_cmd("run /nonexistent/p.toml"));
  CHECK(r.rc == 2);
  CHECK_THAT(r.out, Contains("/nonexistent/p.toml: cannot open"));
  r = run_cmd(vhost_cmd("--log-level loud version"));
  CHECK(r.rc == 2);
  CHECK_THAT(r.out, Contains("--log-level: loud not in {trace,debug,info,warn,error,off}"));
}

TEST_CASE("vhost validate reports every problem with its position and exits 2", "[cli]") {
  fs::path dir = scratch("cli-validate");
  write_file(dir / "bad.toml", "[pipeline]\nstages = [\"probe\"]\n\n[judges.e]\nplugin = \"echo\"\nmodle = \"x\"\n");
  auto r = run_cmd(vhost_cmd("--plugin-dir " + std::string(VHOST_TEST_PLUGIN_DIR) + " validate " + (dir / "bad.toml").string()));
  CHECK(r.rc == 2);
  CHECK_THAT(r.out, Contains((dir / "bad.toml").string() + ":4:1: missing required key 'judges.e.model'"));
  CHECK_THAT(r.out, Contains((dir / "bad.toml").string() + ":6:1: unknown key 'judges.e.modle' (did you mean 'model'?)"));

  write_file(dir / "good.toml", "[pipeline]\nstages = [\"probe\"]\n\n[judges.e]\nplugin = \"echo\"\nmodel = \"x\"\n");
  r = run_cmd(vhost_cmd("validate " + (dir / "good.toml").string() + " --plugin-dir " + VHOST_TEST_PLUGIN_DIR +
                        " --print --set judges.e.prefix=P"));
  CHECK(r.rc == 0);
  CHECK_THAT(r.out, Contains("\"prefix\": \"P\""));
  CHECK_THAT(r.out, Contains("good.toml: ok (1 stage)"));
}

TEST_CASE("vhost run ends with where its report is", "[cli]") {
  fs::path dir = scratch("cli-run");
  write_file(dir / "p.toml", "[pipeline]\nstages = [\"probe\"]\n[judges.e]\nplugin = \"echo\"\nmodel = \"x\"\n"
                             "[stages.probe]\nprompt = \"ping\"\n");
  auto r = run_cmd(vhost_cmd("run " + (dir / "p.toml").string() + " --plugin-dir " + VHOST_TEST_PLUGIN_DIR +
                             " --set judges.e.prefix=pong: --log-level warn"));
  CHECK(r.rc == 0);
  CHECK_THAT(r.out, Contains("pong:ping"));
  fs::path report = dir / "runs" / "p" / "run.json";
  CHECK_THAT(r.out, Contains("report: " + report.string() + "\n"));
  CHECK(r.out.substr(r.out.rfind("report: ")) == "report: " + report.string() + "\n");
  CHECK(nlohmann::json::parse(read_file(report))["status"] == "ok");

  r = run_cmd(vhost_cmd("run " + (dir / "p.toml").string() + " --plugin-dir " + VHOST_TEST_PLUGIN_DIR +
                        " --set stages.probe.prompt=FAIL"));
  CHECK(r.rc == 1);
  CHECK_THAT(r.out, Contains("error: stage 'probe' (probe) failed"));
}

TEST_CASE("vhost plugins lists what it finds, including what it cannot use", "[cli]") {
  auto r = run_cmd(vhost_cmd("plugins --json --plugin-dir " + std::string(VHOST_TEST_BAD_PLUGIN_DIR) +
                             " --plugin-dir " + VHOST_TEST_PLUGIN_DIR));
  REQUIRE(r.rc == 0);
  auto j = nlohmann::json::parse(r.out.substr(r.out.find('{')));
  std::map<std::string, nlohmann::json> by_name;
  for (const auto& p : j["plugins"]) by_name[p["name"]] = p;
  CHECK(by_name["echo"]["error"] == "");
  CHECK(by_name["echo"]["origin"] == "--plugin-dir");
  CHECK(by_name["echo"]["options"][0]["key"] == "model");
  CHECK_THAT(by_name["future"]["error"].get<std::string>(), Contains("ABI 2.0"));
  CHECK(j["search_path"][0]["dir"] == VHOST_TEST_BAD_PLUGIN_DIR);

  r = run_cmd(vhost_cmd("plugins -v --plugin-dir " + std::string(VHOST_TEST_BAD_PLUGIN_DIR)));
  CHECK(r.rc == 0);
  CHECK_THAT(r.out, Contains("judge  garbage  UNUSABLE"));
}

#if VHOST_HAVE_TORCH
TEST_CASE("the quickstart pipeline runs", "[cli][demo]") {
  fs::path dir = scratch("cli-quickstart");
  auto r = run_cmd(vhost_cmd("run " + std::string(VHOST_SOURCE_DIR) + "/examples/quickstart.toml --set pipeline.work_dir=" +
                             dir.string()));
  INFO(r.out);
  CHECK(r.rc == 0);
  CHECK_THAT(r.out, Contains("device: cpu"));
  CHECK_THAT(r.out, Contains("run record: " + (dir / "run.json").string()));
  // The run ends with the report a person opens: the evaluation's HTML page.
  const std::string last = r.out.substr(r.out.rfind("\nreport: ") + 1);
  CHECK(last.rfind("report: ", 0) == 0);
  CHECK(last.size() > 13);
  CHECK(last.substr(last.size() - 12) == "report.html\n");
  const fs::path html = last.substr(8, last.size() - 9);
  REQUIRE(fs::exists(html));
  // The toy judge gives no verdicts: the page says so instead of drawing empty frames.
  CHECK_THAT(read_file(html), Contains("No judgment could be counted"));
}
#endif

#if VHOST_HAVE_TORCH
TEST_CASE("vhost model init: the model plugin names its presets when refusing one", "[cli]") {
  fs::path dir = scratch("cli-presets");
  auto r = run_cmd(vhost_cmd("model init --preset huge --tokenizer-text " + std::string(VHOST_SOURCE_DIR) +
                             "/docs/plugins.md --out " + (dir / "m").string()));
  CHECK(r.rc != 0);
  CHECK_THAT(r.out, Contains("init: invalid argument: unknown preset 'huge' (tiny, stories15m, 1b, 7b, 13b)"));
  CHECK_FALSE(fs::exists(dir / "m" / "model.safetensors"));
}
#endif

TEST_CASE("shortcut flags are the stage options: ranges, choices, required, defaults from one schema", "[cli][malformed]") {
  // Refused by the flag, exit 2, before any plugin loads (the model folder does not exist).
  const std::vector<std::pair<std::string, std::string>> refused = {
      {"serve /nonexistent --port 70000", "--port: must be an integer in [0, 65535], got '70000'"},
      {"serve /nonexistent --heartbeat 0", "--heartbeat: must be a number in [0.05, 3600], got '0'"},
      {"worker /nonexistent", "--controller is required"},
      {"controller --dispatch random", "--dispatch: random not in {shortest_queue,lottery}"},
      {"api --controller http://x --max-body 10", "--max-body: must be an integer in [1024, 1000000000], got '10'"},
      {"arena report", "files is required"},
      {"arena report v.json --bootstrap -1", "--bootstrap: must be an integer in [0, 100000], got '-1'"},
      {"eval agreement a.json --judges human", "--judges: At least 2 required but received 1"},
      {"perplexity /nonexistent --text t --context 2", "--context: must be an integer in [4, 1048576], got '2'"},
      {"generate /nonexistent --max-tokens 4", "--prompt is required"},
      {"generate /nonexistent --prompt hi --seed -2", "--seed: must be an integer in [-1, 9007199254740991], got '-2'"}};
  for (const auto& [args, message] : refused) {
    auto r = run_cmd(vhost_cmd(args));
    INFO(args << "\n" << r.out);
    CHECK(r.rc == 2);
    CHECK_THAT(r.out, Contains(message));
  }
  // The help shows the stage's defaults and ranges, not copies of them.
  auto r = run_cmd(vhost_cmd("chat --help"));
  CHECK_THAT(r.out, Contains("--max-tokens INT:[1, 1048576]=512"));
  CHECK_THAT(r.out, Contains("--temperature FLOAT:[0, 2]=0.7"));
  r = run_cmd(vhost_cmd("serve --help"));
  CHECK_THAT(r.out, Contains("--max-body INT:[1024, 1000000000]=1048576"));

  // Vote files are paths: on the command line read from the directory it runs in, in a pipeline
  // from the pipeline file's directory. A flag given reaches the stage (--anonymous-only: 2 of 3).
  fs::path dir = scratch("cli-arena-relative");
  write_file(dir / "battles.json", R"([{"model_a": "x", "model_b": "y", "winner": "model_a", "anony": true},
                                        {"model_a": "y", "model_b": "x", "winner": "tie", "anony": true},
                                        {"model_a": "y", "model_b": "x", "winner": "model_a", "anony": false}])");
  r = run_cmd("cd " + dir.string() + " && " + vhost_cmd("arena report battles.json --bootstrap 0 --json --anonymous-only"));
  INFO(r.out);
  REQUIRE(r.rc == 0);
  CHECK_THAT(r.out, Contains("\"battles\": 2,"));
  write_file(dir / "p.toml", "[pipeline]\nstages = [\"board\"]\n[stages.board]\ntype = \"arena\"\nfiles = [\"battles.json\"]\nbootstrap = 0\n");
  r = run_cmd("cd / && " + vhost_cmd("run " + (dir / "p.toml").string()));
  INFO(r.out);
  CHECK(r.rc == 0);
  CHECK_THAT(r.out, Contains("3 battles"));
}
