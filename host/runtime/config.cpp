#include "runtime/config.hpp"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <limits>
#include <regex>
#include <sstream>

namespace vhost::host {

// ---- schema ---------------------------------------------------------------------------------
static const std::set<std::string> kTypes = {"string",  "path",        "integer",   "float",
                                             "boolean", "string_list", "path_list", "table",
                                             "instance"};

Schema schema_from_json(const std::string& options_json, const std::string& owner) {
  Schema schema;
  json arr;
  try {
    arr = json::parse(options_json.empty() ? std::string("[]") : options_json);
  } catch (const json::exception& e) {
    throw PluginError(owner + ": its option schema is not valid JSON: " + e.what());
  }
  if (!arr.is_array()) throw PluginError(owner + ": its option schema is not a JSON array");
  for (const auto& o : arr) {
    OptionSpec s;
    try {
      s = OptionSpec::from_json(o);
    } catch (const json::exception& e) {
      throw PluginError(owner + ": malformed option in its schema (" + o.dump() + "): " + e.what());
    }
    if (!kTypes.count(s.type))
      throw PluginError(owner + ": option '" + s.key + "' has unknown type '" + s.type + "'");
    if (s.type == "instance" && s.instance_kind.empty())
      throw PluginError(owner + ": option '" + s.key + "' is an instance but names no \"kind\"");
    if (s.key.empty() || s.key == "plugin" || s.key == "type" || s.key[0] == '_')
      throw PluginError(owner + ": option name '" + s.key + "' is reserved");
    schema.push_back(std::move(s));
  }
  return schema;
}

OptionSpec option_spec(std::string key, std::string type, std::optional<json> default_value, std::string help,
                       std::optional<double> min, std::optional<double> max) {
  OptionSpec s;
  s.key = std::move(key);
  s.type = std::move(type);
  s.default_value = std::move(default_value);
  s.help = std::move(help);
  s.min = min;
  s.max = max;
  return s;
}

OptionSpec one_of(OptionSpec s, std::vector<std::string> choices) {
  s.choices = std::move(choices);
  return s;
}

std::string join(const std::vector<std::string>& items) {
  std::string s;
  for (const auto& x : items) s += (s.empty() ? "" : ", ") + x;
  return s;
}

json schema_to_json(const Schema& schema) {
  json arr = json::array();
  for (const auto& s : schema) arr.push_back(s.to_json());
  return arr;
}

// ---- diagnostics ------------------------------------------------------------------------------
void Diagnostics::error(const std::string& where, const std::string& message) {
  lines_.push_back(where.empty() ? message : where + ": " + message);
}

std::string Diagnostics::text() const {
  // In file order (toml++ iterates keys alphabetically): "name:line:col: ..." sorts by line and
  // column; lines without a position keep their place after those with one.
  auto pos = [](const std::string& l) {
    static const std::regex re("^[^\n]*?:([0-9]+):([0-9]+): ");
    std::smatch m;
    if (std::regex_search(l, m, re)) return std::make_pair(std::stol(m[1]), std::stol(m[2]));
    return std::make_pair(std::numeric_limits<long>::max(), 0L);
  };
  std::vector<std::string> sorted = lines_;
  std::stable_sort(sorted.begin(), sorted.end(),
                   [&](const std::string& a, const std::string& b) { return pos(a) < pos(b); });
  std::string out;
  for (const auto& l : sorted) out += (out.empty() ? "" : "\n") + l;
  return out;
}

void Diagnostics::raise_if_any() const {
  if (!lines_.empty()) throw ConfigError(text());
}

// ---- document -----------------------------------------------------------------------------
static std::string format_region(const toml::source_region& r, const std::string& fallback_name) {
  std::string name = r.path ? *r.path : fallback_name;
  return name + ":" + std::to_string(r.begin.line) + ":" + std::to_string(r.begin.column);
}

static toml::table parse_or_throw(const std::string& text, const std::string& name) {
  try {
    return toml::parse(text, name);
  } catch (const toml::parse_error& e) {
    throw ConfigError(format_region(e.source(), name) + ": TOML syntax error: " +
                      std::string(e.description()));
  }
}

Document Document::from_file(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) throw ConfigError(file.string() + ": cannot open");
  std::stringstream ss;
  ss << in.rdbuf();
  Document d;
  d.source_name_ = file.string();
  d.base_dir_ = fs::absolute(file).parent_path();
  d.root_ = parse_or_throw(ss.str(), d.source_name_);
  return d;
}

Document Document::from_string(const std::string& text, const std::string& source_name,
                               const fs::path& base_dir) {
  Document d;
  d.source_name_ = source_name;
  d.base_dir_ = fs::absolute(base_dir);
  d.root_ = parse_or_throw(text, source_name);
  return d;
}

// JSON as TOML: objects are tables, arrays arrays; null has no TOML spelling.
static void json_to_toml_into(toml::table& t, const std::string& key, const json& v, const std::string& keypath);
static void json_to_toml_item(toml::array& a, const json& v, const std::string& keypath) {
  if (v.is_object()) {
    toml::table t;
    for (auto it = v.begin(); it != v.end(); ++it) json_to_toml_into(t, it.key(), *it, keypath + "." + it.key());
    a.push_back(std::move(t));
  } else if (v.is_array()) {
    toml::array inner;
    for (const auto& x : v) json_to_toml_item(inner, x, keypath);
    a.push_back(std::move(inner));
  } else if (v.is_string()) {
    a.push_back(v.get<std::string>());
  } else if (v.is_boolean()) {
    a.push_back(v.get<bool>());
  } else if (v.is_number_integer()) {
    a.push_back(v.get<int64_t>());
  } else if (v.is_number()) {
    a.push_back(v.get<double>());
  } else {
    throw ConfigError(keypath + ": null has no TOML value");
  }
}
static void json_to_toml_into(toml::table& t, const std::string& key, const json& v, const std::string& keypath) {
  if (v.is_object()) {
    toml::table sub;
    for (auto it = v.begin(); it != v.end(); ++it) json_to_toml_into(sub, it.key(), *it, keypath + "." + it.key());
    t.insert_or_assign(key, std::move(sub));
    return;
  }
  toml::array holder;
  json_to_toml_item(holder, v, keypath);
  holder.for_each([&](auto& x) {
    using T = std::decay_t<decltype(x)>;
    t.insert_or_assign(key, T(x));
  });
}

Document Document::from_json(const json& root, const std::string& source_name,
                             const std::map<std::string, std::string>& origins) {
  if (!root.is_object()) throw ConfigError(source_name + ": a pipeline is an object of tables");
  Document d;
  d.source_name_ = source_name;
  d.base_dir_ = fs::current_path();
  for (auto it = root.begin(); it != root.end(); ++it) json_to_toml_into(d.root_, it.key(), *it, it.key());
  d.overrides_ = origins;
  d.expand_env_ = false;
  return d;
}

static std::vector<std::string> split_keypath(const std::string& path) {
  std::vector<std::string> parts;
  std::string cur;
  for (char c : path) {
    if (c == '.') {
      parts.push_back(cur);
      cur.clear();
    } else {
      cur += c;
    }
  }
  parts.push_back(cur);
  return parts;
}

void Document::apply_override(const std::string& assignment) {
  const std::string origin = "--set " + assignment;
  auto eq = assignment.find('=');
  if (eq == std::string::npos || eq == 0)
    throw ConfigError(origin + ": expected KEY=VALUE, e.g. --set backends.cpu.threads=4");
  std::string keypath = assignment.substr(0, eq);
  std::string value = assignment.substr(eq + 1);
  auto parts = split_keypath(keypath);
  for (const auto& p : parts)
    if (p.empty()) throw ConfigError(origin + ": empty component in key '" + keypath + "'");

  // Read the value as TOML if it is one; otherwise as a plain string (so --set name=foo works).
  std::optional<toml::table> holder;
  try {
    holder = toml::parse("v = " + value);
  } catch (const toml::parse_error&) {
    holder.reset();
  }
  toml::table* t = &root_;
  std::string walked;
  for (std::size_t i = 0; i + 1 < parts.size(); ++i) {
    walked += (walked.empty() ? "" : ".") + parts[i];
    toml::node* n = t->get(parts[i]);
    if (!n) {
      t->insert_or_assign(parts[i], toml::table{});
      n = t->get(parts[i]);
    }
    if (!n->is_table())
      throw ConfigError(origin + ": '" + walked + "' is a " + toml_type_name(*n) +
                        ", not a table, so it has no key '" + parts[i + 1] + "'");
    t = n->as_table();
  }
  if (holder && holder->get("v")) {
    // Copy without the source position: its line/column would point into "v = ...".
    toml::node* v = holder->get("v");
    v->visit([&](auto& x) {
      using T = std::decay_t<decltype(x)>;
      if constexpr (std::is_same_v<T, toml::table> || std::is_same_v<T, toml::array>)
        t->insert_or_assign(parts.back(), T(x));
      else
        t->insert_or_assign(parts.back(), T(x.get()));
    });
  } else {
    t->insert_or_assign(parts.back(), value);
  }
  overrides_[keypath] = origin;
}

std::string Document::origin_of(const std::string& keypath) const {
  // The override that set this key or one of its parents.
  for (auto it = overrides_.rbegin(); it != overrides_.rend(); ++it) {
    const std::string& k = it->first;
    if (keypath == k || (keypath.size() > k.size() && keypath.compare(0, k.size(), k) == 0 &&
                         keypath[k.size()] == '.'))
      return it->second;
  }
  return {};
}

std::string Document::where(const toml::source_region& r, const std::string& keypath) const {
  if (r.begin.line > 0) return format_region(r, source_name_);
  std::string o = origin_of(keypath);
  return o.empty() ? source_name_ : o;
}

std::string Document::where(const toml::node& node, const std::string& keypath) const {
  return where(node.source(), keypath);
}

fs::path Document::resolve_path(const std::string& value, const std::string& keypath) const {
  fs::path p(value);
  if (p.empty() || p.is_absolute()) return p;
  if (!origin_of(keypath).empty()) return fs::absolute(p).lexically_normal();
  return (base_dir_ / p).lexically_normal();
}

static void interpolate_string(std::string& s, const std::string& where, const std::string& keypath,
                               const Document::EnvLookup& lookup, Diagnostics& diag) {
  std::string out;
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '$') {
      out += s[i];
      continue;
    }
    if (i + 1 < s.size() && s[i + 1] == '$') {
      out += '$';
      ++i;
      continue;
    }
    if (i + 1 < s.size() && s[i + 1] == '{') {
      auto close = s.find('}', i + 2);
      if (close == std::string::npos) {
        diag.error(where, keypath + ": unterminated '${' (write $$ for a literal $)");
        return;
      }
      std::string name = s.substr(i + 2, close - i - 2);
      bool ok = !name.empty() && (std::isalpha(static_cast<unsigned char>(name[0])) || name[0] == '_');
      for (char c : name) ok = ok && (std::isalnum(static_cast<unsigned char>(c)) || c == '_');
      if (!ok) {
        diag.error(where, keypath + ": '${" + name + "}' is not a valid environment variable name");
        return;
      }
      auto v = lookup(name);
      if (!v) {
        diag.error(where, keypath + ": environment variable " + name + " is not set");
        return;
      }
      out += *v;
      i = close;
      continue;
    }
    out += '$';
  }
  s = std::move(out);
}

void Document::interpolate_env(const EnvLookup& lookup, Diagnostics& diag) {
  if (!expand_env_) return;
  std::function<void(toml::node&, const std::string&)> walk = [&](toml::node& n, const std::string& kp) {
    if (auto* t = n.as_table()) {
      for (auto&& [k, v] : *t) walk(v, kp.empty() ? std::string(k.str()) : kp + "." + std::string(k.str()));
    } else if (auto* a = n.as_array()) {
      for (std::size_t i = 0; i < a->size(); ++i) walk(*a->get(i), kp + "[" + std::to_string(i) + "]");
    } else if (auto* s = n.as_string()) {
      if (s->get().find('$') != std::string::npos)
        interpolate_string(s->get(), where(n, kp), kp, lookup, diag);
    }
  };
  walk(root_, "");
}

// ---- validation ---------------------------------------------------------------------------
std::string toml_type_name(const toml::node& n) {
  switch (n.type()) {
    case toml::node_type::table: return "table";
    case toml::node_type::array: return "array";
    case toml::node_type::string: return "string";
    case toml::node_type::integer: return "integer";
    case toml::node_type::floating_point: return "float";
    case toml::node_type::boolean: return "boolean";
    case toml::node_type::date: return "date";
    case toml::node_type::time: return "time";
    case toml::node_type::date_time: return "date-time";
    default: return "nothing";
  }
}

json toml_to_json(const toml::node& n) {
  if (auto* t = n.as_table()) {
    json o = json::object();
    for (auto&& [k, v] : *t) o[std::string(k.str())] = toml_to_json(v);
    return o;
  }
  if (auto* a = n.as_array()) {
    json arr = json::array();
    for (auto&& v : *a) arr.push_back(toml_to_json(v));
    return arr;
  }
  if (auto* s = n.as_string()) return s->get();
  if (auto* i = n.as_integer()) return i->get();
  if (auto* f = n.as_floating_point()) return f->get();
  if (auto* b = n.as_boolean()) return b->get();
  std::ostringstream ss;
  n.visit([&](auto&& x) { ss << x; });
  return ss.str();
}

static std::size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<std::size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (std::size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j)
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1)});
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

std::string did_you_mean(const std::string& word, const std::vector<std::string>& candidates) {
  std::string best;
  std::size_t best_d = std::max<std::size_t>(2, word.size() / 3) + 1;
  for (const auto& c : candidates) {
    std::size_t d = edit_distance(word, c);
    if (d < best_d) {
      best_d = d;
      best = c;
    }
  }
  return best;
}

static void set_dotted(json& out, const std::string& dotted, json value) {
  json* cur = &out;
  auto parts = split_keypath(dotted);
  for (std::size_t i = 0; i + 1 < parts.size(); ++i) cur = &(*cur)[parts[i]];
  (*cur)[parts.back()] = std::move(value);
}

static bool has_dotted(const json& j, const std::string& dotted) {
  const json* cur = &j;
  for (const auto& p : split_keypath(dotted)) {
    if (!cur->is_object() || !cur->contains(p)) return false;
    cur = &(*cur)[p];
  }
  return true;
}

static std::string describe_value(const toml::node& n) {
  std::string t = toml_type_name(n);
  if (n.is_string()) return t + " \"" + n.as_string()->get() + "\"";
  if (n.is_value()) return t + " " + toml_to_json(n).dump();
  return t;
}

static std::string fmt_number(double v) {
  std::ostringstream ss;
  ss << v;
  return ss.str();
}

// Converts one value; returns nullopt (after reporting) when it does not fit the spec.
static std::optional<json> convert(const Document& doc, const toml::node& n, const OptionSpec& s,
                                   const std::string& kp, Diagnostics& diag) {
  const std::string at = doc.where(n, kp);
  auto wrong = [&](const std::string& expected) {
    diag.error(at, kp + ": expected " + expected + ", got " + describe_value(n));
    return std::nullopt;
  };
  auto in_range = [&](double v) {
    if ((s.min && (s.min_open ? !(v > *s.min) : v < *s.min)) || (s.max && v > *s.max)) {
      const std::string low = s.min ? (s.min_open ? "greater than " : "at least ") + fmt_number(*s.min) : "";
      std::string range = s.min && s.max ? (s.min_open ? low + " and at most " + fmt_number(*s.max)
                                                       : "between " + fmt_number(*s.min) + " and " + fmt_number(*s.max))
                          : s.min        ? low
                                         : "at most " + fmt_number(*s.max);
      diag.error(at, kp + ": " + fmt_number(v) + " is out of range: must be " + range);
      return false;
    }
    return true;
  };
  if (s.type == "instance") {
    if (!n.is_string()) return wrong("the name of a " + s.instance_kind);
    return json(n.as_string()->get());
  }
  if (s.type == "string" || s.type == "path") {
    if (!n.is_string()) return wrong("a string");
    const std::string& v = n.as_string()->get();
    if (!s.choices.empty() && std::find(s.choices.begin(), s.choices.end(), v) == s.choices.end()) {
      diag.error(at, kp + ": \"" + v + "\" is not one of: " + join(s.choices));
      return std::nullopt;
    }
    if (s.type == "path") return json(doc.resolve_path(v, kp).string());
    return json(v);
  }
  if (s.type == "integer") {
    if (!n.is_integer()) return wrong("an integer");
    auto v = n.as_integer()->get();
    if (!in_range(static_cast<double>(v))) return std::nullopt;
    return json(v);
  }
  if (s.type == "float") {
    if (!n.is_number()) return wrong("a number");
    double v = n.is_integer() ? static_cast<double>(n.as_integer()->get()) : n.as_floating_point()->get();
    if (!std::isfinite(v)) {
      diag.error(at, kp + ": must be a finite number");
      return std::nullopt;
    }
    if (!in_range(v)) return std::nullopt;
    return json(v);
  }
  if (s.type == "boolean") {
    if (!n.is_boolean()) return wrong("true or false");
    return json(n.as_boolean()->get());
  }
  if (s.type == "string_list" || s.type == "path_list") {
    const auto* a = n.as_array();
    if (!a) return wrong("an array of strings");
    json out = json::array();
    for (std::size_t i = 0; i < a->size(); ++i) {
      const toml::node& e = *a->get(i);
      std::string ekp = kp + "[" + std::to_string(i) + "]";
      if (!e.is_string()) {
        diag.error(doc.where(e, ekp), ekp + ": expected a string, got " + describe_value(e));
        return std::nullopt;
      }
      const std::string& v = e.as_string()->get();
      out.push_back(s.type == "path_list" ? doc.resolve_path(v, kp).string() : v);
    }
    return out;
  }
  if (s.type == "table") {
    if (!n.is_table()) return wrong("a table");
    return toml_to_json(n);
  }
  return wrong(s.type);
}

json validate_table(const Document& doc, const toml::table& table, const std::string& path,
                    const Schema& schema, const std::set<std::string>& reserved, Diagnostics& diag,
                    std::map<std::string, std::string>* locations) {
  json out = json::object();
  std::vector<std::string> known;
  for (const auto& s : schema) known.push_back(s.key);
  auto find_spec = [&](const std::string& rel) -> const OptionSpec* {
    for (const auto& s : schema)
      if (s.key == rel) return &s;
    return nullptr;
  };
  auto is_prefix = [&](const std::string& rel) {
    for (const auto& s : schema)
      if (s.key.size() > rel.size() && s.key.compare(0, rel.size(), rel) == 0 && s.key[rel.size()] == '.')
        return true;
    return false;
  };

  std::function<void(const toml::table&, const std::string&)> walk = [&](const toml::table& t,
                                                                          const std::string& prefix) {
    for (auto&& [k, v] : t) {
      std::string rel = prefix.empty() ? std::string(k.str()) : prefix + "." + std::string(k.str());
      std::string kp = path.empty() ? rel : path + "." + rel;
      if (prefix.empty() && reserved.count(rel)) continue;
      if (const OptionSpec* s = find_spec(rel)) {
        if (locations) (*locations)[kp] = doc.where(v, kp);
        if (auto j = convert(doc, v, *s, kp, diag)) set_dotted(out, rel, *j);
      } else if (v.is_table() && is_prefix(rel)) {
        walk(*v.as_table(), rel);
      } else {
        std::string msg = "unknown key '" + kp + "'";
        std::string guess = did_you_mean(rel, known);
        if (!guess.empty()) msg += " (did you mean '" + guess + "'?)";
        if (known.empty()) {
          msg += "; this table takes no options";
        } else {
          msg += "; valid keys: " + join(known);
        }
        diag.error(doc.where(k.source(), kp), msg);
      }
    }
  };
  walk(table, "");

  for (const auto& s : schema) {
    if (has_dotted(out, s.key)) continue;
    // A key that was present but invalid has been reported already.
    const toml::node* present = table.at_path(s.key).node();
    if (present) continue;
    if (s.default_value) {
      json def = *s.default_value;
      if (s.type == "path" && def.is_string() && !def.get<std::string>().empty())
        def = (doc.base_dir() / def.get<std::string>()).lexically_normal().string();
      set_dotted(out, s.key, def);
    } else {
      std::string msg = "missing required key '" + (path.empty() ? s.key : path + "." + s.key) + "'";
      if (!s.help.empty()) msg += " (" + s.help + ")";
      diag.error(doc.where(table, path), msg);
    }
  }
  return out;
}

}  // namespace vhost::host
