// The `vhost` command: a thin shell over the embedding API in vhost/host/host.hpp.
#include <vhost/host/host.hpp>

#include <CLI/CLI.hpp>

#include <iostream>

namespace vh = vhost::host;

namespace {

// Exit codes: 0 success, 1 a stage or plugin failed, 2 the command line or pipeline is wrong.
constexpr int kFailed = 1;
constexpr int kBadInput = 2;

void print_plugins(const vh::Host& host, bool as_json, bool verbose) {
  auto plugins = host.plugins();
  if (as_json) {
    vh::json arr = vh::json::array();
    for (const auto& p : plugins) {
      vh::json shadowed = vh::json::array();
      for (const auto& s : p.shadowed) shadowed.push_back(s.string());
      arr.push_back({{"kind", p.kind}, {"name", p.name}, {"version", p.version}, {"abi", p.abi},
                     {"torch_abi", p.torch_abi}, {"file", p.file.string()}, {"origin", p.origin},
                     {"description", p.description}, {"options", p.options}, {"shadowed", shadowed},
                     {"error", p.error}});
    }
    vh::json dirs = vh::json::array();
    for (const auto& [d, origin] : host.search_path()) dirs.push_back({{"dir", d.string()}, {"origin", origin}});
    std::cout << vh::json{{"search_path", dirs}, {"plugins", arr}}.dump(2) << "\n";
    return;
  }
  std::cout << "search path:\n";
  for (const auto& [d, origin] : host.search_path()) std::cout << "  " << d.string() << "  (" << origin << ")\n";
  if (plugins.empty()) std::cout << "no plugins found (file names: vhost_<kind>_<name>.so)\n";
  for (const auto& p : plugins) {
    std::cout << p.kind << "  " << p.name;
    if (p.error.empty())
      std::cout << "  " << p.version << "  ABI " << p.abi << "  " << p.file.string() << "\n    " << p.description
                << "\n";
    else
      std::cout << "  UNUSABLE  " << p.file.string() << "\n    " << p.error << "\n";
    for (const auto& s : p.shadowed) std::cout << "    shadows " << s.string() << "\n";
    if (verbose && p.error.empty()) {
      if (!p.torch_abi.empty()) std::cout << "    torch ABI: " << p.torch_abi << "\n";
      for (const auto& o : p.options) {
        std::cout << "    " << o["key"].get<std::string>() << " (" << o["type"].get<std::string>() << ")";
        if (o.contains("default")) std::cout << " = " << o["default"].dump();
        else std::cout << " [required]";
        std::cout << ": " << o["help"].get<std::string>() << "\n";
      }
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"vhost: train, serve and evaluate LLaMA chat models (Vicuna's recipe) with plugins"};
  app.require_subcommand(1);
  app.fallthrough();  // global options may also follow the subcommand
  std::vector<std::string> plugin_dirs;
  std::string log_level = "info";
  app.add_option("--plugin-dir", plugin_dirs, "search this plugin folder first (repeatable)");
  app.add_option("--log-level", log_level, "how much to log")
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error", "off"}))
      ->capture_default_str();

  std::string file;
  std::vector<std::string> sets, only;
  bool print_resolved = false, as_json = false, verbose = false;

  auto* run = app.add_subcommand("run", "run the stages of a pipeline file in order");
  run->add_option("file", file, "pipeline TOML file")->required();
  run->add_option("--set", sets, "override a value: section.key=value (repeatable)");
  run->add_option("--only", only, "run only this stage (repeatable)");

  auto* validate = app.add_subcommand("validate", "check a pipeline file without running it");
  validate->add_option("file", file, "pipeline TOML file")->required();
  validate->add_option("--set", sets, "override a value: section.key=value (repeatable)");
  validate->add_flag("--print", print_resolved, "print the effective configuration as JSON");

  auto* plugins = app.add_subcommand("plugins", "list every plugin on the search path");
  plugins->add_flag("--json", as_json, "machine-readable output");
  plugins->add_flag("-v,--verbose", verbose, "also list each plugin's options");

  auto* stages = app.add_subcommand("stages", "list the stage types and their options");
  auto* ver = app.add_subcommand("version", "print versions");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : kBadInput;
  }

  try {
    vh::set_log_level(log_level);
    vh::HostOptions opts;
    for (const auto& d : plugin_dirs) opts.plugin_dirs.emplace_back(d);
    vh::Host host(opts);

    if (*ver) {
      std::cout << "vhost " << vh::version() << "\nplugin ABI " << vh::abi_version() << "\n";
      return 0;
    }
    if (*plugins) {
      print_plugins(host, as_json, verbose);
      return 0;
    }
    if (*stages) {
      for (const auto& t : vh::Host::stage_types()) {
        std::cout << t["type"].get<std::string>() << ": " << t["help"].get<std::string>() << "\n";
        for (const auto& o : t["options"])
          std::cout << "    " << o["key"].get<std::string>() << " (" << o["type"].get<std::string>() << ")"
                    << (o.contains("default") ? " = " + o["default"].dump() : std::string(" [required]")) << ": "
                    << o["help"].get<std::string>() << "\n";
      }
      return 0;
    }
    auto pipeline = host.load_file(file, sets);
    if (*validate) {
      if (print_resolved) std::cout << pipeline.resolved().dump(2) << "\n";
      std::cout << file << ": ok (" << pipeline.stages().size() << " stage"
                << (pipeline.stages().size() == 1 ? "" : "s") << ")\n";
      return 0;
    }
    vh::RunOptions ro;
    ro.only = only;
    auto result = host.run(pipeline, ro);
    std::cout << "pipeline '" << result.pipeline << "' finished: " << result.stages.size() << " stage"
              << (result.stages.size() == 1 ? "" : "s") << "\nreport: " << result.report.string() << "\n";
    return 0;
  } catch (const vh::ConfigError& e) {
    std::cerr << "error: " << e.what() << "\n";
    return kBadInput;
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return kFailed;
  }
}
