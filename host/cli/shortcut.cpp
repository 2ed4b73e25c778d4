#include "shortcut.hpp"

#include <cmath>
#include <limits>
#include <sstream>
#include <stdexcept>

namespace vhost::cli {

std::string absolute(const std::string& path) { return path.empty() ? path : std::filesystem::absolute(path).string(); }

namespace {

// 1048576, not 1.04858e+06; 0.05 as such.
std::string number_text(double v) {
  if (std::isfinite(v) && v == std::floor(v) && std::fabs(v) <= 9007199254740992.0) return std::to_string(static_cast<int64_t>(v));
  std::ostringstream s;
  s << v;
  return s.str();
}

// "[0, 2]", "(0, 1]", "at least 4"
std::string range_text(const vhost::Option& o) {
  if (o.min && o.max) return (o.min_open ? "(" : "[") + number_text(*o.min) + ", " + number_text(*o.max) + "]";
  if (o.min) return (o.min_open ? "greater than " : "at least ") + number_text(*o.min);
  return "at most " + number_text(*o.max);
}

// The schema's range as a CLI11 check: "--temperature: must be a number in [0, 2], got '3'".
CLI::Validator range_check(const vhost::Option& o) {
  const bool integer = o.type == "integer";
  const std::string what = std::string(integer ? "an integer" : "a number") + (o.min && o.max ? " in " : " ") + range_text(o);
  return CLI::Validator(
      [o, integer, what](std::string& text) -> std::string {
        try {
          std::size_t used = 0;
          const double v = integer ? static_cast<double>(std::stoll(text, &used)) : std::stod(text, &used);
          const bool above = !o.min || (o.min_open ? v > *o.min : v >= *o.min);
          if (used == text.size() && !std::isnan(v) && above && (!o.max || v <= *o.max)) return "";
        } catch (const std::exception&) {
        }
        return "must be " + what + ", got '" + text + "'";
      },
      range_text(o), "");
}

// A default as the help shows it: 512, 0.7, gpt4-pair human; nothing for "" and [].
std::string default_text(const vh::json& d) {
  if (d.is_string()) return d.get<std::string>();
  if (d.is_number()) return number_text(d.get<double>());
  if (d.is_boolean()) return d.get<bool>() ? "true" : "false";
  std::string out;
  if (d.is_array())
    for (const auto& x : d) out += (out.empty() ? "" : " ") + (x.is_string() ? x.get<std::string>() : x.dump());
  return out;
}

}  // namespace

Shortcut::Shortcut(const std::string& name, const std::string& stage, const std::filesystem::path& work_dir) {
  set("pipeline.name", name).set("pipeline.stages", vh::json::array({stage})).set("pipeline.work_dir", work_dir.string());
}

Shortcut& Shortcut::set(const std::string& keypath, vh::json value, const std::string& flag) {
  vh::json* cur = &doc;
  std::size_t start = 0;
  for (auto dot = keypath.find('.'); dot != std::string::npos; start = dot + 1, dot = keypath.find('.', start))
    cur = &(*cur)[keypath.substr(start, dot - start)];
  (*cur)[keypath.substr(start)] = std::move(value);
  if (!flag.empty()) origins[keypath] = flag;
  return *this;
}

void Shortcut::backend(const std::string& plugin, const std::set<std::string>& keys, int64_t threads, bool threads_given) {
  const std::string t = "backends." + plugin;
  set(t + ".plugin", plugin, "--backend " + plugin);
  if (keys.count("threads")) set(t + ".threads", threads, "--threads");
  else if (threads_given) throw vh::ConfigError("--threads: the backend plugin '" + plugin + "' has no option threads");
}

void Shortcut::model(const std::string& plugin, const std::string& dir, const std::string& adapter) {
  set("models.m.plugin", plugin).set("models.m.path", absolute(dir), "MODEL_DIR " + dir);
  if (!adapter.empty()) set("models.m.adapter", absolute(adapter), "--adapter");
}

void Shortcut::model_options(const std::string& table, const std::vector<std::string>& options) {
  for (const auto& o : options) {
    const auto eq = o.find('=');
    const std::string key = o.substr(0, eq);
    if (eq == std::string::npos || key.empty() ||
        key.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_") != std::string::npos)
      throw vh::ConfigError("--model-option " + o + ": expected KEY=VALUE with KEY letters, digits and _");
    const std::string value = o.substr(eq + 1);
    vh::json v;
    try {
      v = vh::json::parse(value);
    } catch (const std::exception&) {
      v = value;
    }
    if (!v.is_boolean() && !v.is_number()) v = value;
    set(table + "." + key, v, "--model-option " + o);
  }
}

void Shortcut::templates(const std::string& table, const std::string& file) {
  if (file.empty()) return;
  vh::json tj = vh::read_toml_file(file);
  for (auto it = tj.begin(); it != tj.end(); ++it)
    if (!it->is_object()) throw vh::ConfigError(file + ": " + it.key() + ": a template is a table ([" + it.key() + "])");
  set(table + ".templates", tj, "--templates " + file);
}

vh::Pipeline Shortcut::load(const vh::Host& host) const {
  return host.load_json(doc, "vhost " + doc["pipeline"]["name"].get<std::string>(), origins);
}

StageFlags::StageFlags(CLI::App* app, const std::string& stage_type, const std::vector<Flag>& flags) {
  static const vh::json types = vh::Host::stage_types();
  const vh::json* options = nullptr;
  for (const auto& t : types)
    if (t["type"] == stage_type) options = &t["options"];
  if (!options) throw std::logic_error("StageFlags: no stage type " + stage_type);
  for (const auto& f : flags) {
    const vh::json* entry = nullptr;
    for (const auto& o : *options)
      if (o["key"] == f.key) entry = &o;
    if (!entry) throw std::logic_error("StageFlags: the stage type " + stage_type + " has no option " + f.key);
    Bound& b = bound_.emplace_back();
    b.spec = vhost::Option::from_json(*entry);
    b.name = f.name;
    if (b.name.empty()) {
      b.name = "--" + f.key;
      for (char& c : b.name) c = c == '_' ? '-' : c;
    }
    const std::string& type = b.spec.type;
    const bool list = type == "string_list" || type == "path_list";
    const std::string help = b.spec.help + (list && b.name[0] == '-' ? " (repeatable)" : "");
    if (type == "boolean") {
      b.cli = app->add_flag(b.name, b.flag, help);
      continue;
    }
    if (type == "integer") b.cli = app->add_option(b.name, b.integer, help);
    else if (type == "float") b.cli = app->add_option(b.name, b.number, help);
    else if (type == "string" || type == "path") b.cli = app->add_option(b.name, b.text, help);
    else if (list) b.cli = app->add_option(b.name, b.list, help);
    else throw std::logic_error("StageFlags: " + stage_type + "." + f.key + " is a " + type + ", which no flag takes");
    if ((type == "integer" || type == "float") && (b.spec.min || b.spec.max)) b.cli->check(range_check(b.spec));
    if (!b.spec.choices.empty()) b.cli->check(CLI::IsMember(b.spec.choices));
    if (!b.spec.default_value) b.cli->required();
    else if (const std::string d = default_text(*b.spec.default_value); !d.empty()) b.cli->default_str(d);
  }
}

CLI::Option* StageFlags::option(const std::string& key) const {
  for (const auto& b : bound_)
    if (b.spec.key == key) return b.cli;
  throw std::logic_error("StageFlags: no flag for " + key);
}

void StageFlags::exactly(const std::string& key, int n) const {
  for (const auto& b : bound_)
    if (b.spec.key == key) b.cli->expected(n)->description(b.spec.help);
}

void StageFlags::apply(Shortcut& s, const std::string& stage_id) const {
  for (const auto& b : bound_) {
    if (b.cli->count() == 0) continue;
    const std::string& t = b.spec.type;
    const vh::json value = t == "integer" ? vh::json(b.integer)
                           : t == "float" ? vh::json(b.number)
                           : t == "boolean" ? vh::json(b.flag)
                           : t == "string" || t == "path" ? vh::json(b.text)
                                                          : vh::json(b.list);
    std::string origin = b.name;
    if (origin[0] != '-')
      for (char& c : origin) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    s.set("stages." + stage_id + "." + b.spec.key, value, origin);
  }
}

}  // namespace vhost::cli
