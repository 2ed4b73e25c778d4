// Pipeline files: syntax, unknown keys, types, required keys, ${ENV}, --set, paths.
#include "helpers.hpp"

static vh::Host test_host(std::map<std::string, std::string> env = {}) {
  return vh::Host(only_dirs({VHOST_TEST_PLUGIN_DIR}, std::move(env)));
}

TEST_CASE("malformed TOML names file, line and column", "[config]") {
  auto host = test_host();
  auto msg = config_error_of([&] { host.load_string("[pipeline]\nstages = [\"info\"\nname = 1\n", "bad.toml"); });
  CHECK_THAT(msg, StartsWith("bad.toml:3:1: TOML syntax error"));

  fs::path dir = scratch("malformed");
  write_file(dir / "p.toml", "[pipeline]\nstages = [\"probe\"]\n[judges.e\nplugin = \"echo\"\n");
  msg = config_error_of([&] { host.load_file(dir / "p.toml"); });
  CHECK_THAT(msg, StartsWith((dir / "p.toml").string() + ":3:"));
  CHECK_THAT(msg, Contains("TOML syntax error"));

  msg = config_error_of([&] { host.load_file(dir / "missing.toml"); });
  CHECK_THAT(msg, Contains("missing.toml: cannot open"));

  // Not UTF-8: a syntax error with a position, not a crash.
  msg = config_error_of([&] { host.load_string("[pipeline]\nname = \"\xff\xfe\"\n", "bin.toml"); });
  CHECK_THAT(msg, StartsWith("bin.toml:2:"));
}

TEST_CASE("unknown keys are errors, with position and a suggestion", "[config]") {
  auto host = test_host();
  auto msg = config_error_of([&] {
    host.load_string(echo_pipeline("modle = \"x\"\n") + "[stagez]\n", "t.toml");
  });
  CHECK_THAT(msg, Contains("t.toml:8:1: unknown key 'judges.e.modle' (did you mean 'model'?)"));
  CHECK_THAT(msg, Contains("valid keys: model, prefix, delay_ms, backend, extra, top_p"));
  CHECK_THAT(msg, Contains("t.toml:9:2: unknown key 'stagez' (did you mean 'stages'?)"));
  // Every problem is reported, in file order.
  CHECK(msg.find("t.toml:8:1") < msg.find("t.toml:9:2"));

  msg = config_error_of([&] { host.load_string("[pipeline]\nstages = []\nstage = 1\n", "t.toml"); });
  CHECK_THAT(msg, Contains("t.toml:3:1: unknown key 'pipeline.stage' (did you mean 'stages'?)"));

  // Free-form tables accept any key; a dotted option name is a nested table.
  CHECK_NOTHROW(host.load_string(echo_pipeline("extra = { anything = 1, deep = { x = [1] } }\n")));
}

TEST_CASE("wrong types and out-of-range values name the key", "[config]") {
  auto host = test_host();
  auto msg = config_error_of([&] { host.load_string("[pipeline]\nstages = \"probe\"\n", "t.toml"); });
  CHECK_THAT(msg, Contains("t.toml:2:10: pipeline.stages: expected an array of strings, got string \"probe\""));

  msg = config_error_of([&] { host.load_string(echo_pipeline("delay_ms = \"5\"\n"), "t.toml"); });
  CHECK_THAT(msg, Contains("t.toml:8:12: judges.e.delay_ms: expected an integer, got string \"5\""));

  msg = config_error_of([&] { host.load_string(echo_pipeline("delay_ms = 99999\n"), "t.toml"); });
  CHECK_THAT(msg, Contains("judges.e.delay_ms: 99999 is out of range: must be between 0 and 10000"));

  // A plugin's exclusive lower bound crosses the ABI (vhost::Option is the host's option type too).
  msg = config_error_of([&] { host.load_string(echo_pipeline("top_p = 0.0\n"), "t.toml"); });
  CHECK_THAT(msg, Contains("judges.e.top_p: 0 is out of range: must be greater than 0 and at most 1"));
  CHECK_NOTHROW(host.load_string(echo_pipeline("top_p = 0.5\n"), "t.toml"));

  msg = config_error_of([&] { host.load_string("[pipeline]\nstages = [\"probe\", 3]\n", "t.toml"); });
  CHECK_THAT(msg, Contains("pipeline.stages[1]: expected a string, got integer 3"));

  msg = config_error_of([&] { host.load_string("pipeline = 3\n", "t.toml"); });
  CHECK_THAT(msg, Contains("t.toml:1:12: 'pipeline' must be a table"));
}

TEST_CASE("missing required keys point at their table", "[config]") {
  auto host = test_host();
  auto msg = config_error_of([&] { host.load_string("[backends.x]\n", "t.toml"); });
  CHECK_THAT(msg, Contains("missing [pipeline] table"));

  msg = config_error_of([&] { host.load_string("\n[pipeline]\nname = \"n\"\n", "t.toml"); });
  CHECK_THAT(msg, Contains("t.toml:2:1: missing required key 'pipeline.stages'"));

  msg = config_error_of([&] {
    host.load_string("[pipeline]\nstages = [\"probe\"]\n[judges.e]\nplugin = \"echo\"\n", "t.toml");
  });
  CHECK_THAT(msg, Contains("t.toml:3:1: missing required key 'judges.e.model' (model name to report (required))"));

  msg = config_error_of([&] { host.load_string("[pipeline]\nstages = []\n[judges.e]\nmodel = \"m\"\n", "t.toml"); });
  CHECK_THAT(msg, Contains("t.toml:3:1: missing required key 'judges.e.plugin'"));
  CHECK_THAT(msg, Contains("available: c, c10, echo, older, thrower"));
}

TEST_CASE("unknown plugins, stage types and stage wiring", "[config]") {
  auto host = test_host();
  auto msg = config_error_of([&] {
    host.load_string("[pipeline]\nstages = []\n[judges.e]\nplugin = \"echoo\"\n", "t.toml");
  });
  CHECK_THAT(msg, Contains("t.toml:4:10: judges.e.plugin: no judge plugin named 'echoo' (did you mean 'echo'?)"));
  CHECK_THAT(msg, Contains(std::string(VHOST_TEST_PLUGIN_DIR) + " (--plugin-dir)"));

  msg = config_error_of([&] { host.load_string("[pipeline]\nstages = [\"infoo\"]\n", "t.toml"); });
  CHECK_THAT(msg, Contains("t.toml:2:10: pipeline.stages: unknown stage type 'infoo' (did you mean 'info'?)"));

  msg = config_error_of([&] { host.load_string("[pipeline]\nstages = [\"info\", \"info\"]\n", "t.toml"); });
  CHECK_THAT(msg, Contains("'info' is listed twice"));

  msg = config_error_of([&] {
    host.load_string("[pipeline]\nstages = [\"info\"]\n[stages.later]\ntype = \"info\"\n", "t.toml");
  });
  CHECK_THAT(msg, Contains("t.toml:3:9: stage 'later' is defined but not listed in pipeline.stages"));

  msg = config_error_of([&] { host.load_string("[pipeline]\nstages = [\"probe\"]\n", "t.toml"); });
  CHECK_THAT(msg, Contains("this probe stage needs a judge: declare one under [judges.NAME]"));

  msg = config_error_of([&] {
    host.load_string(echo_pipeline() + "[judges.f]\nplugin = \"echo\"\nmodel = \"n\"\n", "t.toml");
  });
  CHECK_THAT(msg, Contains("stages.probe.judge: several judges are declared (e, f)"));

  msg = config_error_of([&] { host.load_string(echo_pipeline() + "[stages.probe]\njudge = \"g\"\n", "t.toml"); });
  CHECK_THAT(msg, Contains("t.toml:9:9: stages.probe.judge: no [judges.g] is declared"));

  msg = config_error_of([&] {
    host.load_string(echo_pipeline("", "info") + "[stages.info]\ninstances = [\"judges.nope\"]\n", "t.toml");
  });
  CHECK_THAT(msg, Contains("stages.info.instances: 'judges.nope' is not a declared instance"));
}

TEST_CASE("${NAME} reads the environment, an unset variable is an error naming it", "[config][env]") {
  auto host = test_host({{"JUDGE_MODEL", "gpt-4"}, {"EMPTY", ""}});
  auto p = host.load_string(echo_pipeline("prefix = \"${JUDGE_MODEL}:$${literal}:${EMPTY}|\"\n"), "t.toml");
  CHECK(p.resolved()["judges"]["e"]["prefix"] == "gpt-4:${literal}:|");

  auto msg = config_error_of([&] { host.load_string(echo_pipeline("prefix = \"key ${NOT_SET_ANYWHERE}\"\n"), "t.toml"); });
  CHECK_THAT(msg, Contains("t.toml:8:10: judges.e.prefix: environment variable NOT_SET_ANYWHERE is not set"));

  msg = config_error_of([&] { host.load_string(echo_pipeline("prefix = \"${OPEN\"\n"), "t.toml"); });
  CHECK_THAT(msg, Contains("judges.e.prefix: unterminated '${'"));

  msg = config_error_of([&] { host.load_string(echo_pipeline("prefix = \"${1BAD}\"\n"), "t.toml"); });
  CHECK_THAT(msg, Contains("'${1BAD}' is not a valid environment variable name"));

  // Inside arrays and nested tables too.
  msg = config_error_of([&] { host.load_string(echo_pipeline("extra = { list = [\"${NOPE_X}\"] }\n"), "t.toml"); });
  CHECK_THAT(msg, Contains("judges.e.extra.list[0]: environment variable NOPE_X is not set"));

  // The default lookup is the process environment.
  EnvVar v("VHOST_TEST_PREFIX", "from-env");
  vh::HostOptions o = only_dirs({VHOST_TEST_PLUGIN_DIR});
  o.env = nullptr;
  vh::Host env_host(o);
  CHECK(env_host.load_string(echo_pipeline("prefix = \"${VHOST_TEST_PREFIX}\"\n")).resolved()["judges"]["e"]["prefix"] ==
        "from-env");
}

TEST_CASE("set overrides values, typed as TOML, and are named in errors", "[config][set]") {
  auto host = test_host();
  auto p = host.load_string(echo_pipeline(), "t.toml",
                            {"judges.e.delay_ms=5", "judges.e.prefix=hello world", "judges.e.model=\"quoted\"",
                             "judges.f.plugin=echo", "judges.f.model=second", "stages.probe.judge=f"});
  auto r = p.resolved();
  CHECK(r["judges"]["e"]["delay_ms"] == 5);
  CHECK(r["judges"]["e"]["prefix"] == "hello world");
  CHECK(r["judges"]["e"]["model"] == "quoted");
  CHECK(r["judges"]["f"]["model"] == "second");
  CHECK(r["stages"]["probe"]["judge"] == "judges.f");
  CHECK(p.where("judges.e.delay_ms") == "--set judges.e.delay_ms=5");
  CHECK(p.where("judges.e.model") == "--set judges.e.model=\"quoted\"");

  auto msg = config_error_of([&] { host.load_string(echo_pipeline(), "t.toml", {"judges.e.delay_ms=abc"}); });
  CHECK_THAT(msg, Contains("--set judges.e.delay_ms=abc: judges.e.delay_ms: expected an integer, got string \"abc\""));

  msg = config_error_of([&] { host.load_string(echo_pipeline(), "t.toml", {"judges.e.bogus=1"}); });
  CHECK_THAT(msg, Contains("--set judges.e.bogus=1: unknown key 'judges.e.bogus'"));

  msg = config_error_of([&] { host.load_string(echo_pipeline(), "t.toml", {"no-equals-sign"}); });
  CHECK_THAT(msg, Contains("--set no-equals-sign: expected KEY=VALUE"));

  msg = config_error_of([&] { host.load_string(echo_pipeline(), "t.toml", {"judges.e.model.x=1"}); });
  CHECK_THAT(msg, Contains("'judges.e.model' is a string, not a table"));

  msg = config_error_of([&] { host.load_string(echo_pipeline(), "t.toml", {"judges..model=1"}); });
  CHECK_THAT(msg, Contains("empty component"));
}

TEST_CASE("relative paths resolve against the pipeline file", "[config]") {
  auto host = test_host();
  fs::path dir = scratch("paths");
  write_file(dir / "sub" / "p.toml", "[pipeline]\nstages = []\nwork_dir = \"out\"\nplugin_dirs = [\"../plugins\"]\n");
  auto p = host.load_file(dir / "sub" / "p.toml");
  CHECK(p.work_dir() == dir / "sub" / "out");
  CHECK(p.resolved()["pipeline"]["plugin_dirs"][0] == (dir / "plugins").string());
  CHECK(p.name() == "p");
  // A --set path is relative to the working directory, as on any command line.
  auto q = host.load_file(dir / "sub" / "p.toml", {"pipeline.work_dir=rel"});
  CHECK(q.work_dir() == fs::current_path() / "rel");
}

TEST_CASE("a plugin's own rejection of a value points at the key in the file", "[config]") {
  auto host = test_host();
  auto p = host.load_string(echo_pipeline("prefix = \"bad\"\n"), "t.toml");
  auto msg = config_error_of([&] { host.run(p); });
  CHECK_THAT(msg, Contains("t.toml:8:10: judges.e.prefix: must not be 'bad' (rejected by judge plugin 'echo'"));
}
