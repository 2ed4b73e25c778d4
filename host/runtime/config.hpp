// Internal: a parsed TOML document that remembers where every value came from, the --set and
// ${ENV} rewriting passes, and validation of a table against an option schema.
#pragma once

#include <vhost/host/error.hpp>

#include <nlohmann/json.hpp>
#include <vhost/option.hpp>
#include <toml++/toml.h>

#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

namespace vhost::host {

using json = nlohmann::json;
namespace fs = std::filesystem;

// The SDK's option type (vhost/option.hpp): stages and plugins declare options alike.
using OptionSpec = vhost::Option;
using Schema = std::vector<OptionSpec>;

// An option of a host-defined schema (the pipeline table, stage types).
OptionSpec option_spec(std::string key, std::string type, std::optional<json> default_value, std::string help,
                       std::optional<double> min = std::nullopt, std::optional<double> max = std::nullopt);

// `s` restricted to these values.
OptionSpec one_of(OptionSpec s, std::vector<std::string> choices);

// "a, b, c"
std::string join(const std::vector<std::string>& items);

// Parses the JSON schema a plugin publishes; `owner` names it in errors.
Schema schema_from_json(const std::string& options_json, const std::string& owner);
json schema_to_json(const Schema& schema);

// Collects every problem before reporting, so `vhost validate` shows them all at once.
class Diagnostics {
 public:
  void error(const std::string& where, const std::string& message);
  bool empty() const { return lines_.empty(); }
  std::size_t size() const { return lines_.size(); }
  std::string text() const;
  void raise_if_any() const;  // throws ConfigError

 private:
  std::vector<std::string> lines_;
};

class Document {
 public:
  static Document from_file(const fs::path& file);
  static Document from_string(const std::string& text, const std::string& source_name,
                              const fs::path& base_dir);
  // A pipeline given as data (the CLI's shortcuts): no source positions, so an error names the
  // key path's entry in `origins` ("stages.generate.max_tokens" -> "--max-tokens", a parent
  // path counts) or else `source_name`; relative paths resolve against the working directory,
  // and ${NAME} is not expanded (the values are a user's text, not a file's).
  static Document from_json(const json& root, const std::string& source_name,
                            const std::map<std::string, std::string>& origins);

  // "a.b.c=value": value is read as a TOML value (42, 1.5, true, "s", [1, 2]); anything that
  // does not parse as one is taken as a plain string.
  void apply_override(const std::string& assignment);
  // Replaces ${NAME} in every string with the environment variable; $$ is a literal $.
  using EnvLookup = std::function<std::optional<std::string>(const std::string&)>;
  void interpolate_env(const EnvLookup& lookup, Diagnostics& diag);

  toml::table& root() { return root_; }
  const toml::table& root() const { return root_; }
  const std::string& source_name() const { return source_name_; }
  const fs::path& base_dir() const { return base_dir_; }

  // "file:line:col" of a node, or "--set key=value" for a value that came from an override.
  std::string where(const toml::node& node, const std::string& keypath) const;
  std::string where(const toml::source_region& region, const std::string& keypath) const;
  // Resolves a path-typed value: relative to the file's directory, or to the working directory
  // for values given with --set.
  fs::path resolve_path(const std::string& value, const std::string& keypath) const;

 private:
  std::string origin_of(const std::string& keypath) const;
  toml::table root_;
  std::string source_name_;
  fs::path base_dir_;
  std::map<std::string, std::string> overrides_;  // keypath -> "--set ..." (or a from_json origin)
  bool expand_env_ = true;
};

// Validates `table` (found at `path`, e.g. "backends.cpu") against `schema`. Keys in `reserved`
// are the caller's and skipped. Every problem goes to `diag`; the result holds every option,
// defaults filled in and paths absolute. Each key's location is recorded in `locations`.
json validate_table(const Document& doc, const toml::table& table, const std::string& path,
                    const Schema& schema, const std::set<std::string>& reserved, Diagnostics& diag,
                    std::map<std::string, std::string>* locations = nullptr);

std::string toml_type_name(const toml::node& node);
json toml_to_json(const toml::node& node);
// Closest candidate within a small edit distance, or empty.
std::string did_you_mean(const std::string& word, const std::vector<std::string>& candidates);

}  // namespace vhost::host
