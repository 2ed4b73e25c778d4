// Internal: finds plugin files, loads them (once per process, never unloaded) and validates
// their descriptors.
#pragma once

#include "runtime/config.hpp"

#include <vhost/c/vhost.h>

#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace boost::dll {
class shared_library;
}

namespace vhost::host {

struct SearchDir {
  fs::path dir;
  std::string origin;  // "plugin_dirs", "--plugin-dir", "VHOST_PLUGIN_PATH", "build tree", ...
};

// A plugin file found on the search path; its kind and name come from the file name
// (vhost_<kind>_<name>.so) and are checked against the descriptor when it loads.
struct Candidate {
  std::string kind, name;
  fs::path file;
  std::string origin;
  std::vector<fs::path> shadowed;  // same kind/name later in the search path
};

struct LoadedPlugin {
  std::string kind, name;
  fs::path file;
  // Points at `desc_copy`: the plugin's descriptor copied into a zeroed one of this SDK's size,
  // so the slots an older plugin's shorter descriptor lacks read as NULL.
  const vhost_plugin_desc* desc = nullptr;
  vhost_plugin_desc desc_copy{};
  Schema schema;
  std::shared_ptr<boost::dll::shared_library> lib;
  std::string label() const;  // "judge plugin 'echo' (/path/vhost_judge_echo.so)"
};

// Kinds in table form: "backend" <-> "backends".
std::string kind_section(const std::string& kind);

class Registry {
 public:
  explicit Registry(std::vector<SearchDir> dirs);
  const std::vector<Candidate>& candidates() const { return candidates_; }
  const Candidate* find(const std::string& kind, const std::string& name) const;
  std::vector<std::string> names(const std::string& kind) const;
  // Throws PluginError naming the plugin and file.
  static std::shared_ptr<const LoadedPlugin> load(const Candidate& c);

 private:
  std::vector<SearchDir> dirs_;
  std::vector<Candidate> candidates_;
};

// The directories searched after explicit ones: VHOST_PLUGIN_PATH, then the plugins folder
// beside the host library (build tree or install tree), then the configured install prefix.
std::vector<SearchDir> standard_search_dirs(bool use_env, bool use_defaults);

}  // namespace vhost::host
