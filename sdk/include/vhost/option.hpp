// One entry of a configuration schema, the same type on both sides of the ABI: a plugin builds
// its options with it (vhost/plugin.hpp) and publishes them as JSON (to_json), and the host reads
// them back (from_json) and declares its own stages' options with it. Header-only, no libtorch.
#pragma once

#include <nlohmann/json.hpp>

#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace vhost {

using json = nlohmann::json;

// One entry of a plugin's configuration schema. Build with the static helpers:
//   Option::integer("threads", 0, "CPU threads (0: all cores)").range(0, 1024)
struct Option {
  std::string key, type, help;
  std::optional<json> default_value;  // empty: required
  std::optional<double> min, max;
  bool min_open = false;  // min itself excluded: (min, max]
  std::vector<std::string> choices;
  std::string instance_kind;  // for type "instance"

  static Option make(std::string key, std::string type, std::optional<json> def, std::string help) {
    Option o;
    o.key = std::move(key);
    o.type = std::move(type);
    o.default_value = std::move(def);
    o.help = std::move(help);
    return o;
  }
  static Option string(std::string key, std::optional<std::string> def, std::string help) {
    return make(std::move(key), "string", def ? std::optional<json>(*def) : std::nullopt, std::move(help));
  }
  // A filesystem path; a relative path is resolved against the pipeline file's directory.
  static Option path(std::string key, std::optional<std::string> def, std::string help) {
    return make(std::move(key), "path", def ? std::optional<json>(*def) : std::nullopt, std::move(help));
  }
  static Option integer(std::string key, std::optional<std::int64_t> def, std::string help) {
    return make(std::move(key), "integer", def ? std::optional<json>(*def) : std::nullopt, std::move(help));
  }
  static Option number(std::string key, std::optional<double> def, std::string help) {
    return make(std::move(key), "float", def ? std::optional<json>(*def) : std::nullopt, std::move(help));
  }
  static Option boolean(std::string key, std::optional<bool> def, std::string help) {
    return make(std::move(key), "boolean", def ? std::optional<json>(*def) : std::nullopt, std::move(help));
  }
  static Option string_list(std::string key, std::optional<std::vector<std::string>> def, std::string help) {
    return make(std::move(key), "string_list", def ? std::optional<json>(*def) : std::nullopt, std::move(help));
  }
  // Another instance of the pipeline, of the given kind; the plugin receives its full id
  // ("backends.cpu") or "" and looks it up with vhost::find_extension.
  static Option instance(std::string key, std::string kind, std::string help) {
    Option o = make(std::move(key), "instance", json(""), std::move(help));
    o.instance_kind = std::move(kind);
    return o;
  }
  // A free-form sub-table, passed to the plugin as a JSON object without checking its keys.
  static Option table(std::string key, std::string help) {
    return make(std::move(key), "table", json::object(), std::move(help));
  }
  Option&& range(double lo, double hi) && {
    min = lo;
    max = hi;
    return std::move(*this);
  }
  // (lo, hi]: lo itself excluded (a temperature of 0 is allowed, a top_p of 0 is not).
  Option&& above(double lo, double hi) && {
    min = lo;
    max = hi;
    min_open = true;
    return std::move(*this);
  }
  Option&& one_of(std::vector<std::string> c) && {
    choices = std::move(c);
    return std::move(*this);
  }

  json to_json() const {
    json j = {{"key", key}, {"type", type}, {"help", help}};
    if (default_value) j["default"] = *default_value;
    if (min) j["min"] = *min;
    if (max) j["max"] = *max;
    if (min_open) j["exclusive_min"] = true;
    if (!choices.empty()) j["choices"] = choices;
    if (!instance_kind.empty()) j["kind"] = instance_kind;
    return j;
  }

  // The inverse of to_json (what a host reads from a plugin's options_json); throws
  // json::exception on a malformed entry.
  static Option from_json(const json& j) {
    Option o;
    o.key = j.at("key").get<std::string>();
    o.type = j.at("type").get<std::string>();
    o.help = j.value("help", "");
    if (j.contains("default")) o.default_value = j.at("default");
    if (j.contains("min")) o.min = j.at("min").get<double>();
    if (j.contains("max")) o.max = j.at("max").get<double>();
    if (j.contains("exclusive_min")) o.min_open = j.at("exclusive_min").get<bool>();
    if (j.contains("choices")) o.choices = j.at("choices").get<std::vector<std::string>>();
    if (j.contains("kind")) o.instance_kind = j.at("kind").get<std::string>();
    return o;
  }
};

}  // namespace vhost
