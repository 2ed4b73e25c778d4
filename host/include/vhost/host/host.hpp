// The embedding API: what the `vhost` executable itself uses, and what another application
// links (target vhost::host) to load plugins and run pipelines. No libtorch, no toml++ here.
//
//   vhost::host::Host host;                                   // standard plugin search path
//   auto pipeline = host.load_string(toml_text, "inline.toml");
//   auto result = host.run(pipeline);                         // throws vhost::host::Error
#pragma once

#include <vhost/host/error.hpp>

#include <nlohmann/json.hpp>

#include <filesystem>
#include <functional>
#include <iosfwd>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace vhost::host {

using json = nlohmann::json;

// "0.1.0"
std::string version();
// "1.6": the plugin ABI this host implements (vhost/c/vhost.h).
std::string abi_version();

// A TOML file as JSON (side files such as custom conversation templates). Throws ConfigError
// naming file:line:col on a syntax error.
json read_toml_file(const std::filesystem::path& file);

// trace, debug, info, warn, error, off. Throws Error for anything else.
void set_log_level(const std::string& level);

struct PluginInfo {
  std::string kind, name, version, description;
  std::string abi;        // the SDK ABI the plugin was built for, e.g. "1.6"
  std::string torch_abi;  // empty for plugins without libtorch
  std::filesystem::path file;
  std::string origin;                           // which part of the search path found it
  std::vector<std::filesystem::path> shadowed;  // same kind and name later in the path, unused
  json options = json::array();                 // its configuration schema
  std::string error;                            // why it cannot be used; empty when it loaded
};

struct HostOptions {
  // Searched first, in this order (the CLI's --plugin-dir).
  std::vector<std::filesystem::path> plugin_dirs;
  // Then VHOST_PLUGIN_PATH (colon-separated).
  bool use_env_plugin_path = true;
  // Then the plugins folder beside the host library (build or install tree), then the
  // configured install prefix.
  bool use_default_dirs = true;
  // How ${NAME} in pipeline strings is resolved; default: the process environment.
  std::function<std::optional<std::string>(const std::string&)> env;
};

struct StageResult {
  std::string id, type;
  double seconds = 0;
  json output;
};

struct RunResult {
  std::string pipeline;
  std::filesystem::path work_dir;
  std::filesystem::path report;  // work_dir/run.json
  std::vector<StageResult> stages;
};

struct RunOptions {
  std::vector<std::string> only;  // stage ids to run; empty: all, in the file's order
  std::ostream* out = nullptr;    // human-readable stage output; default std::cout
  std::istream* in = nullptr;     // what interactive stages (chat) read; default std::cin
};

class Host;

// A parsed and fully validated pipeline: every plugin it names was found and loaded, and every
// key was checked against the schema of its stage or plugin.
class Pipeline {
 public:
  Pipeline(Pipeline&&) noexcept;
  Pipeline& operator=(Pipeline&&) noexcept;
  ~Pipeline();
  const std::string& name() const;
  const std::string& source() const;
  std::vector<std::string> stages() const;
  std::filesystem::path work_dir() const;
  // The effective configuration: defaults filled in, paths absolute, ${ENV} expanded.
  json resolved() const;
  // Where a key path was written ("pipeline.toml:12:3", "--set a.b=1"), or empty.
  std::string where(const std::string& keypath) const;

  struct Impl;

 private:
  friend class Host;
  friend struct PipelineBuilder;
  explicit Pipeline(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

class Host {
 public:
  explicit Host(HostOptions options = {});
  ~Host();
  Host(const Host&) = delete;
  Host& operator=(const Host&) = delete;

  // The plugin search path, in precedence order: (directory, where it came from).
  std::vector<std::pair<std::filesystem::path, std::string>> search_path() const;
  // Every plugin on the search path; each is loaded to read and check its descriptor.
  std::vector<PluginInfo> plugins() const;

  // Parse, apply `overrides` ("section.key=value"), expand ${ENV}, validate. Throws ConfigError
  // (every problem, with file:line:col) or PluginError.
  Pipeline load_file(const std::filesystem::path& file, const std::vector<std::string>& overrides = {}) const;
  Pipeline load_string(const std::string& toml, const std::string& source_name = "<string>",
                       const std::vector<std::string>& overrides = {},
                       const std::filesystem::path& base_dir = std::filesystem::current_path()) const;

  // A pipeline built as data instead of TOML text (what the CLI's shortcuts do): `pipeline` holds
  // the tables a pipeline file would ({"pipeline": {...}, "models": {"m": {...}}, ...}). Its
  // values carry no file position, so an error names the key's entry in `origins` (key path ->
  // where the value came from, e.g. "stages.generate.max_tokens" -> "--max-tokens"; a parent
  // path counts) or else `source_name`. Relative paths resolve against the working directory;
  // ${NAME} is not expanded.
  Pipeline load_json(const json& pipeline, const std::string& source_name,
                     const std::map<std::string, std::string>& origins = {}) const;

  // Runs the stages in order; writes work_dir/run.json. Throws Error when a stage fails.
  RunResult run(const Pipeline& pipeline, const RunOptions& options = {}) const;

  // Runs a plugin-level tool of a model plugin ("init", "train-tokenizer", "encode", ...).
  json model_tool(const std::string& plugin, const std::string& tool, const json& args) const;

  // The stage types this host knows, as JSON ({"type", "help", "options"}).
  static json stage_types();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace vhost::host
