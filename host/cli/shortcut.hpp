// The CLI's shortcuts (generate, perplexity, chat, serve, worker, prepare, the report and cluster
// commands): one-stage pipelines built as data (Host::load_json), not as TOML text.
#pragma once

#include <vhost/host/host.hpp>
#include <vhost/option.hpp>

#include <CLI/CLI.hpp>

#include <cstdint>
#include <deque>
#include <filesystem>
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

namespace vhost::cli {

namespace vh = vhost::host;

// PATH made absolute against the working directory ("" stays "").
std::string absolute(const std::string& path);

// A pipeline as data. Each value records the flag it came from, so that an error names the flag
// ("--max-tokens: ...") rather than a line of a file the user never saw.
struct Shortcut {
  vh::json doc = vh::json::object();
  std::map<std::string, std::string> origins;

  Shortcut(const std::string& name, const std::string& stage, const std::filesystem::path& work_dir);
  // Sets a dotted key path ("stages.generate.max_tokens"; no component holds a dot).
  Shortcut& set(const std::string& keypath, vh::json value, const std::string& flag = "");
  // [backends.NAME] of the backend plugin NAME (--backend), with --threads where the plugin has
  // that option (the cpu backend); --threads given for one without it is refused naming it.
  void backend(const std::string& plugin, const std::set<std::string>& keys, int64_t threads, bool threads_given);
  // [models.m] of `plugin` on MODEL_DIR (with --adapter).
  void model(const std::string& plugin, const std::string& dir, const std::string& adapter);
  // --model-option KEY=VALUE pairs into TABLE: the plugin, not the host, knows its options and
  // checks them. VALUE: true/false and numbers as such, else a string.
  void model_options(const std::string& table, const std::vector<std::string>& options);
  // Custom templates from a TOML file of [NAME] tables into TABLE.templates (none for no file).
  void templates(const std::string& table, const std::string& file);

  vh::Pipeline load(const vh::Host& host) const;
  vh::RunResult run(const vh::Host& host) const { return host.run(load(host)); }
};

// The flags of a shortcut, made from its stage type's option schema (Host::stage_types()): each
// flag's value type, range, choices, help and default are the stage option's, declared once there.
// A value out of range is refused by its flag before anything loads; a flag not given leaves its
// key out of the pipeline, so the stage's own default applies.
class StageFlags {
 public:
  struct Flag {
    Flag(std::string k, std::string n = "") : key(std::move(k)), name(std::move(n)) {}
    std::string key;   // the stage option
    std::string name;  // "--api-key"; empty: --KEY with - for _; a name without dashes is positional
  };
  StageFlags(CLI::App* app, const std::string& stage_type, const std::vector<Flag>& flags);
  // The CLI11 option of KEY (to tighten it: ->required()).
  CLI::Option* option(const std::string& key) const;
  // The list KEY takes exactly N values, given together ("--judges human human").
  void exactly(const std::string& key, int n) const;
  // stages.ID.KEY for every flag given.
  void apply(Shortcut& s, const std::string& stage_id) const;

 private:
  struct Bound {
    vhost::Option spec;
    std::string name;
    CLI::Option* cli = nullptr;
    int64_t integer = 0;
    double number = 0;
    bool flag = false;
    std::string text;
    std::vector<std::string> list;
  };
  std::deque<Bound> bound_;  // stable addresses: CLI11 writes into them
};

}  // namespace vhost::cli
