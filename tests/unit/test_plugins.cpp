// Plugins: discovery order, refusal of incompatible or broken libraries, failures inside plugin
// calls, the torch extension rule.
#include "helpers.hpp"
#include <chrono>
#include <future>
#include <thread>

static const fs::path kGood = VHOST_TEST_PLUGIN_DIR;
static const fs::path kBad = VHOST_TEST_BAD_PLUGIN_DIR;

static std::string used_file(const vh::Host& host, const std::string& toml) {
  std::ostringstream sink;
  vh::RunOptions ro;
  ro.out = &sink;
  auto result = host.run(host.load_string(toml, "order.toml"), ro);
  return result.stages.at(0).output["instances"]["judges.e"]["file"].get<std::string>();
}

TEST_CASE("discovery order: plugin_dirs, --plugin-dir, VHOST_PLUGIN_PATH, build tree, install prefix", "[plugins]") {
  fs::path root = scratch("discovery");
  fs::path a = root / "a", b = root / "b", c = root / "c";
  for (const auto& d : {a, b, c}) {
    fs::create_directories(d);
    fs::copy_file(kGood / "vhost_judge_echo.so", d / "vhost_judge_echo.so");
  }
  EnvVar env("VHOST_PLUGIN_PATH", (root / "does-not-exist").string() + ":" + c.string());
  vh::HostOptions o;
  o.plugin_dirs = {b};
  o.use_env_plugin_path = true;
  o.use_default_dirs = true;
  vh::Host host(o);

  auto search = host.search_path();
  REQUIRE(search.size() >= 4);
  CHECK(search[0] == std::make_pair(b, std::string("--plugin-dir")));
  CHECK(search[1].second == "VHOST_PLUGIN_PATH");
  CHECK(search[2] == std::make_pair(c, std::string("VHOST_PLUGIN_PATH")));
  CHECK(search[3].second == "build tree");
  CHECK(fs::equivalent(search[3].first, VHOST_BUILD_PLUGIN_DIR));
  CHECK(search.back().second == "install prefix");

  std::string toml = "[pipeline]\nstages = [\"info\"]\nwork_dir = \"" + (root / "runs").string() + "\"\nplugin_dirs = [\"" +
         a.string() + "\"]\n[judges.e]\nplugin = \"echo\"\nmodel = \"m\"\n[stages.info]\ninstances = [\"judges.e\"]\n";
  CHECK(used_file(host, toml) == (a / "vhost_judge_echo.so").string());
  fs::remove(a / "vhost_judge_echo.so");
  CHECK(used_file(host, toml) == (b / "vhost_judge_echo.so").string());
  fs::remove(b / "vhost_judge_echo.so");
  CHECK(used_file(host, toml) == (c / "vhost_judge_echo.so").string());
  fs::remove(c / "vhost_judge_echo.so");
  CHECK_THAT(config_error_of([&] { host.load_string(toml, "order.toml"); }),
             Contains("no judge plugin named 'echo'"));

  // The same plugin in two folders: the first wins, the other is listed as shadowed.
  fs::copy_file(kGood / "vhost_judge_echo.so", b / "vhost_judge_echo.so");
  fs::copy_file(kGood / "vhost_judge_echo.so", c / "vhost_judge_echo.so");
  bool seen = false;
  for (const auto& p : host.plugins()) {
    if (p.kind == "judge" && p.name == "echo") {
      seen = true;
      CHECK(p.file == b / "vhost_judge_echo.so");
      CHECK(p.origin == "--plugin-dir");
      REQUIRE(p.shadowed.size() == 1);
      CHECK(p.shadowed[0] == c / "vhost_judge_echo.so");
      CHECK(p.version == "1.2.3");
      CHECK(p.abi == "1.7");
      CHECK(p.error.empty());
    }
#if VHOST_HAVE_TORCH
    if (p.kind == "backend" && p.name == "cpu") {
      CHECK(p.origin == "build tree");
      CHECK(fs::equivalent(p.file.parent_path(), VHOST_BUILD_PLUGIN_DIR));
      CHECK_THAT(p.torch_abi, StartsWith("torch-"));
    }
#endif
  }
  CHECK(seen);
}

TEST_CASE("plugins built for another SDK ABI are refused, naming both versions", "[plugins][abi]") {
  vh::Host host(only_dirs({kBad}));
  std::map<std::string, std::string> errors;
  for (const auto& p : host.plugins()) errors[p.name] = p.error;
  CHECK_THAT(errors["future"], Contains("vhost_judge_future.so): built for vhost SDK ABI 2.0, but this host "
                                        "implements ABI 1.7 (major versions differ)"));
  CHECK_THAT(errors["newer"], Contains("built for vhost SDK ABI 1.99, newer than this host's ABI 1.7"));
  CHECK_THAT(errors["misnamed"], Contains("the file name says judge 'misnamed' but the plugin says it is judge 'other'"));
  CHECK_THAT(errors["broken"], Contains("failed to load"));
  CHECK_THAT(errors["broken"], Contains("vhost_test_symbol_that_does_not_exist"));
  CHECK_THAT(errors["garbage"], Contains("vhost_judge_garbage.so): failed to load"));
  CHECK_THAT(errors["noentry"], Contains("not a vhost plugin: it exports neither 'vhost_plugin_get' (ABI 1.6) nor 'vhost_plugin_entry'"));

  // In a pipeline, the refusal is reported at the line that names the plugin.
  auto msg = config_error_of([&] {
    host.load_string("[pipeline]\nstages = []\n[judges.j]\nplugin = \"future\"\nmodel = \"m\"\n", "abi.toml");
  });
  CHECK_THAT(msg, Contains("abi.toml:4:10: judges.j.plugin: judge plugin 'future'"));
  CHECK_THAT(msg, Contains("ABI 2.0"));
  CHECK_THAT(msg, Contains("ABI 1.7"));

  // An older minor (1.0) still loads: tables only grew at the end.
  vh::Host good(only_dirs({kGood}));
  bool older = false;
  for (const auto& p : good.plugins())
    if (p.name == "older") {
      older = true;
      CHECK(p.abi == "1.0");
      CHECK(p.error.empty());
    }
  CHECK(older);
}

TEST_CASE("plugins written in C: one against the frozen ABI 1.0 header, one against vhost.h alone", "[plugins][abi]") {
  vh::Host host(only_dirs({kGood}));
  std::map<std::string, vh::PluginInfo> found;
  for (const auto& p : host.plugins()) found[p.name] = p;
  REQUIRE(found.count("c10"));
  REQUIRE(found.count("c"));
  CHECK(found["c10"].error.empty());
  CHECK(found["c10"].abi == "1.0");
  CHECK(found["c"].error.empty());
  CHECK(found["c"].abi == "1.7");
  CHECK(found["c"].options.size() == 2);

  // The 1.0 plugin's shorter descriptor and judge table work: create, describe, complete.
  std::ostringstream out;
  vh::RunOptions ro;
  ro.out = &out;
  auto p = host.load_string("[pipeline]\nstages = [\"info\", \"probe\"]\nwork_dir = \"" + std::string(VHOST_TEST_TMP_DIR) +
                                "/c10\"\n[judges.j]\nplugin = \"c10\"\ngreeting = \"hello from 2019\"\n",
                            "c10.toml");
  auto r = host.run(p, ro);
  CHECK(r.stages.at(0).output["instances"]["judges.j"]["description"]["abi"] == "1.0");
  CHECK_THAT(r.stages.at(1).output["reply"]["text"].get<std::string>(), StartsWith("hello from 2019 ("));
}

TEST_CASE("two pipelines run at once in one process, each plugin finding its own run's instances", "[plugins][abi]") {
  vh::Host host(only_dirs({kGood}));
  // A C relay judge (ABI 1.6) forwards to the echo judge "judges.inner" of its own run; both
  // pipelines have one, with different prefixes.
  auto pipeline = [&](const std::string& name, int delay_ms, const std::string& lookup) {
    return host.load_string("[pipeline]\nname = \"" + name + "\"\nstages = [\"probe\"]\nwork_dir = \"" +
                                std::string(VHOST_TEST_TMP_DIR) + "/two-" + name + "\"\n[judges.inner]\nplugin = \"echo\"\n" +
                                "model = \"" + name + "\"\nprefix = \"" + name + ": \"\ndelay_ms = " + std::to_string(delay_ms) +
                                "\n[judges.relay]\nplugin = \"c\"\npeer = \"inner\"\nlookup = \"" + lookup +
                                "\"\n[stages.probe]\njudge = \"relay\"\nprompt = \"hi\"\n",
                            name + ".toml");
  };
  auto run_quietly = [&](const vh::Pipeline& p) {
    std::ostringstream out;
    vh::RunOptions ro;
    ro.out = &out;
    return host.run(p, ro).stages.at(0).output["reply"]["text"].get<std::string>();
  };
  // Y holds its instances for 3 s (its echo judge sleeps inside the relayed call) ...
  auto y = pipeline("Y", 3000, "run");
  auto slow = std::async(std::launch::async, [&] { return run_quietly(y); });
  std::this_thread::sleep_for(std::chrono::milliseconds(400));
  // ... while X runs whole, beside it, and its relay finds X's own judges.inner.
  CHECK(run_quietly(pipeline("X", 0, "run")) == "X: hi");
  CHECK(slow.wait_for(std::chrono::seconds(0)) == std::future_status::timeout);  // Y still running
  // The 1.1 lookup names no run: with two "judges.inner" alive it refuses instead of guessing.
  CHECK_THAT(error_of([&] { run_quietly(pipeline("Z", 0, "process")); }),
             Contains("find_instance (ABI 1.1) found no judge to relay to"));
  CHECK(slow.get() == "Y: hi");
  // Alone in the process, the 1.1 lookup finds it.
  CHECK(run_quietly(pipeline("Z", 0, "process")) == "Z: hi");
}

TEST_CASE("a plugin whose factory throws gives one clear error and the host goes on", "[plugins]") {
  vh::Host host(only_dirs({kGood}));
  auto p = host.load_string("[pipeline]\nstages = [\"probe\"]\nwork_dir = \"" + std::string(VHOST_TEST_TMP_DIR) +
                                "/thrower\"\n[judges.t]\nplugin = \"thrower\"\n",
                            "thrower.toml");
  auto msg = error_of([&] { host.run(p); });
  CHECK_THAT(msg, Contains("stage 'probe' (probe) failed: judge plugin 'thrower' (" + (kGood / "vhost_judge_thrower.so").string() +
                           "): could not create 'judges.t': internal error: boom in factory"));
  auto report = nlohmann::json::parse(read_file(p.work_dir() / "run.json"));
  CHECK(report["status"] == "failed");
  CHECK_THAT(report["stages"][0]["error"].get<std::string>(), Contains("boom in factory"));

  // Errors thrown by a plugin call, vhost::Error or any std::exception, come back as messages.
  auto ok = host.load_string(echo_pipeline(), "echo.toml", {"stages.probe.prompt=FAIL"});
  CHECK_THAT(error_of([&] { host.run(ok); }), Contains("judge plugin 'echo'"));
  CHECK_THAT(error_of([&] { host.run(ok); }), Contains("request failed: runtime error: asked to fail"));
  auto thrower = host.load_string(echo_pipeline(), "echo.toml", {"stages.probe.prompt=THROW"});
  CHECK_THAT(error_of([&] { host.run(thrower); }), Contains("internal error: unexpected std exception"));

  // ... and the host still works.
  std::ostringstream out;
  vh::RunOptions ro;
  ro.out = &out;
  auto fine = host.load_string(echo_pipeline("prefix = \">> \"\n"), "echo.toml", {"stages.probe.prompt=hi"});
  auto result = host.run(fine, ro);
  CHECK(result.stages.at(0).output["reply"]["text"] == ">> hi");
  CHECK_THAT(out.str(), Contains(">> hi"));
  auto ok_report = nlohmann::json::parse(read_file(result.report));
  CHECK(ok_report["status"] == "ok");
  CHECK(ok_report["stages"][0]["output"]["reply"]["model"] == "m");
}

TEST_CASE("only: runs the named stages and rejects unknown ones", "[plugins]") {
  vh::Host host(only_dirs({kGood}));
  auto p = host.load_string("[pipeline]\nstages = [\"info\", \"probe\"]\nwork_dir = \"" + std::string(VHOST_TEST_TMP_DIR) +
                            "/only\"\n[judges.e]\nplugin = \"echo\"\nmodel = \"m\"\n");
  std::ostringstream out;
  vh::RunOptions ro;
  ro.out = &out;
  ro.only = {"probe"};
  auto r = host.run(p, ro);
  REQUIRE(r.stages.size() == 1);
  CHECK(r.stages[0].id == "probe");
  ro.only = {"nope"};
  CHECK_THAT(config_error_of([&] { host.run(p, ro); }), Contains("--only nope: no stage 'nope'"));
}

#if VHOST_HAVE_TORCH
TEST_CASE("libtorch objects pass only between plugins with the same torch ABI", "[plugins][torch]") {
  vh::Host host(only_dirs({kGood, VHOST_BUILD_PLUGIN_DIR}));
  auto toml = [](const std::string& plugin) {
    return "[pipeline]\nstages = [\"probe\"]\nwork_dir = \"" + std::string(VHOST_TEST_TMP_DIR) +
           "/torchabi\"\n[backends.cpu]\nplugin = \"cpu\"\nthreads = 1\n[judges.e]\nplugin = \"" + plugin +
           "\"\nmodel = \"m\"\nbackend = \"backends.cpu\"\n";
  };
  std::ostringstream out;
  vh::RunOptions ro;
  ro.out = &out;
  // The backend must exist before a judge asks for it: info creates every instance in order.
  auto with_info = [&](const std::string& plugin) {
    auto t = toml(plugin);
    t.replace(t.find("stages = [\"probe\"]"), 18, "stages = [\"info\", \"probe\"]");
    return host.run(host.load_string(t, "torch.toml"), ro).stages.at(1).output["reply"];
  };
  auto plain = with_info("echo");  // built without libtorch: refused
  CHECK(plain["backend_found"] == false);
  auto torch = with_info("torchecho");  // same libtorch: gets the backend's device
  CHECK(torch["backend_found"] == true);
  CHECK(torch["backend_device"] == "cpu");
}

TEST_CASE("the cpu backend applies and reports its settings", "[plugins][torch]") {
  vh::Host host(only_dirs({VHOST_BUILD_PLUGIN_DIR}));
  std::ostringstream out;
  vh::RunOptions ro;
  ro.out = &out;
  auto p = host.load_string("[pipeline]\nstages = [\"info\"]\nwork_dir = \"" + std::string(VHOST_TEST_TMP_DIR) +
                            "/cpu\"\n[backends.cpu]\nplugin = \"cpu\"\nthreads = 1\nseed = 7\ndtype = \"bfloat16\"\n");
  auto d = host.run(p, ro).stages.at(0).output["instances"]["backends.cpu"]["description"];
  CHECK(d["device"] == "cpu");
  CHECK(d["threads"] == 1);
  CHECK(d["seed"] == 7);
  CHECK(d["dtype"] == "bfloat16");
  CHECK_THAT(out.str(), Contains("backends.cpu: backend plugin 'cpu'"));
}
#endif

TEST_CASE("a model plugin built for ABI 1.6: its tool in the model table, its capabilities in tokenizer_info", "[plugins][abi]") {
  vh::Host host(only_dirs({kGood}));
  std::map<std::string, vh::PluginInfo> found;
  for (const auto& p : host.plugins()) found[p.name] = p;
  REQUIRE(found.count("c16"));
  CHECK(found["c16"].error.empty());
  CHECK(found["c16"].abi == "1.6");
  // Before 1.7 a model's tools were in its model table; the host still finds them there.
  auto r = host.model_tool("c16", "hello", {{"x", 1}});
  CHECK(r["hello"] == "from the 1.6 model table");
  CHECK(r["args"]["x"] == 1);
  CHECK_THAT(error_of([&] { host.model_tool("c16", "nope", vh::json::object()); }),
             Contains("this model plugin has no tool 'nope'"));
  // A 1.7 plugin without tools: its descriptor has none, its model table refuses.
  CHECK_THAT(error_of([&] { host.model_tool("bytes", "init", vh::json::object()); }),
             Contains("this model plugin has no tool 'init'"));
}
