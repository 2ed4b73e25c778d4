#include <vhost/host/host.hpp>

#include "runtime/config.hpp"
#include "runtime/instance.hpp"
#include "runtime/host_api.hpp"
#include "runtime/registry.hpp"
#include "runtime/stage.hpp"

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <chrono>
#include <cstdlib>
#include <ctime>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <mutex>
#include <regex>
#include <set>
#include <sstream>

namespace vhost::host {

std::string version() { return VHOST_VERSION; }
std::string abi_version() { return std::to_string(VHOST_ABI_MAJOR) + "." + std::to_string(VHOST_ABI_MINOR); }

json read_toml_file(const fs::path& file) { return toml_to_json(Document::from_file(file).root()); }

static void ensure_logger() {
  static std::once_flag once;
  std::call_once(once, [] {
    auto logger = spdlog::stderr_color_mt("vhost");
    logger->set_pattern("[%H:%M:%S] [%^%l%$] %v");
    spdlog::set_default_logger(logger);
  });
}

void set_log_level(const std::string& level) {
  ensure_logger();
  static const std::vector<std::string> names = {"trace", "debug", "info", "warn", "error", "off"};
  auto it = std::find(names.begin(), names.end(), level);
  if (it == names.end())
    throw Error("unknown log level '" + level + "' (use trace, debug, info, warn, error or off)");
  spdlog::set_level(spdlog::level::from_str(level));
}

// ---- pipeline -------------------------------------------------------------------------------
struct InstanceDecl {
  std::string ref, kind, plugin;
  std::shared_ptr<const LoadedPlugin> loaded;
  json config;
  std::vector<std::string> deps;  // instances it names (type "instance" options), created first
};

struct StageDecl {
  std::string id;
  const StageType* type = nullptr;
  json config;
};

struct Pipeline::Impl {
  std::string name, source;
  fs::path work_dir;
  std::vector<std::string> order;
  std::vector<InstanceDecl> instances;  // in declaration order
  std::map<std::string, StageDecl> stages;
  std::map<std::string, std::string> locations;
  json resolved;
  std::vector<SearchDir> dirs;  // its plugin_dirs, then the host's search path
  bool once_per_node = false;   // pipeline.once_per = "node"
};

Pipeline::Pipeline(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Pipeline::Pipeline(Pipeline&&) noexcept = default;
Pipeline& Pipeline::operator=(Pipeline&&) noexcept = default;
Pipeline::~Pipeline() = default;
const std::string& Pipeline::name() const { return impl_->name; }
const std::string& Pipeline::source() const { return impl_->source; }
std::vector<std::string> Pipeline::stages() const { return impl_->order; }
fs::path Pipeline::work_dir() const { return impl_->work_dir; }
json Pipeline::resolved() const { return impl_->resolved; }
std::string Pipeline::where(const std::string& keypath) const {
  auto it = impl_->locations.find(keypath);
  return it == impl_->locations.end() ? std::string() : it->second;
}

// ---- host -----------------------------------------------------------------------------------
struct Host::Impl {
  HostOptions options;
  std::vector<SearchDir> dirs;  // explicit, then standard
};

Host::Host(HostOptions options) : impl_(std::make_unique<Impl>()) {
  ensure_logger();
  impl_->options = std::move(options);
  for (const auto& d : impl_->options.plugin_dirs) impl_->dirs.push_back({fs::absolute(d), "--plugin-dir"});
  for (auto& d : standard_search_dirs(impl_->options.use_env_plugin_path, impl_->options.use_default_dirs))
    impl_->dirs.push_back(std::move(d));
  if (!impl_->options.env)
    impl_->options.env = [](const std::string& name) -> std::optional<std::string> {
      const char* v = std::getenv(name.c_str());
      return v ? std::optional<std::string>(v) : std::nullopt;
    };
}

Host::~Host() = default;

std::vector<std::pair<fs::path, std::string>> Host::search_path() const {
  std::vector<std::pair<fs::path, std::string>> out;
  for (const auto& d : impl_->dirs) out.emplace_back(d.dir, d.origin);
  return out;
}

std::vector<PluginInfo> Host::plugins() const {
  Registry reg(impl_->dirs);
  std::vector<PluginInfo> out;
  for (const auto& c : reg.candidates()) {
    PluginInfo info;
    info.kind = c.kind;
    info.name = c.name;
    info.file = c.file;
    info.origin = c.origin;
    info.shadowed = c.shadowed;
    try {
      auto p = Registry::load(c);
      info.version = p->desc->version;
      info.description = p->desc->description ? p->desc->description : "";
      info.abi = std::to_string(p->desc->abi_major) + "." + std::to_string(p->desc->abi_minor);
      info.torch_abi = p->desc->torch_abi ? p->desc->torch_abi : "";
      info.options = schema_to_json(p->schema);
    } catch (const std::exception& e) {
      info.error = e.what();
    }
    out.push_back(std::move(info));
  }
  return out;
}

json Host::stage_types() {
  json out = json::array();
  for (const auto& t : vhost::host::stage_types())
    out.push_back({{"type", t.type}, {"help", t.help}, {"options", schema_to_json(t.schema)}});
  return out;
}

namespace {

const std::vector<std::string> kSections = {"pipeline", "backends", "models", "datasets", "judges", "stages"};

bool valid_id(const std::string& id) {
  static const std::regex re("^[A-Za-z0-9][A-Za-z0-9_-]*$");
  return std::regex_match(id, re);
}

Schema pipeline_schema() {
  return {option_spec("name", "string", "", "the pipeline's name (default: the file's name)"),
          option_spec("stages", "string_list", std::nullopt, "the stages to run, in order, e.g. [\"info\"]"),
          option_spec("work_dir", "path", "", "where stages write their outputs (default: runs/NAME beside the file)"),
          option_spec("plugin_dirs", "path_list", json::array(), "extra plugin folders, searched first"),
          one_of(option_spec("once_per", "string", "job",
                             "under several processes, who runs the stages that write files (all but train): "
                             "rank 0 (job: paths on a shared filesystem) or local rank 0 of each node (node)"),
                 {"job", "node"})};
}

}  // namespace

// A model plugin's tool, with the plugin found on the given search path.
static json model_tool_on(const std::vector<SearchDir>& dirs, const std::string& plugin, const std::string& tool,
                          const json& args) {
  Registry reg(dirs);
  auto names = reg.names(VHOST_KIND_MODEL);
  if (plugin.empty() && names.size() != 1)  // "" is the only model plugin there is
    throw PluginError(std::string(names.empty() ? "no model plugin on the search path"
                                                : "several model plugins on the search path (" + join(names) + "): say which"));
  const Candidate* c = reg.find(VHOST_KIND_MODEL, plugin.empty() ? names[0] : plugin);
  if (!c)
    throw PluginError("no model plugin named '" + plugin + "' (available: " + (names.empty() ? "none" : join(names)) + ")");
  return vhost::host::model_tool(*Registry::load(*c), tool, args);
}

json Host::model_tool(const std::string& plugin, const std::string& tool, const json& args) const {
  return model_tool_on(impl_->dirs, plugin, tool, args);
}

// Builds a Pipeline from a document: the tables checked against their schemas (the plugins' and
// the stage types'), instance references resolved, every problem collected with its location and
// reported at once.
struct PipelineBuilder {
  static Pipeline build(Document doc, const std::vector<std::string>& overrides, const HostOptions& options,
                        const std::vector<SearchDir>& host_dirs) {
    for (const auto& o : overrides) doc.apply_override(o);
    PipelineBuilder b(doc);
    doc.interpolate_env(options.env, b.diag);
    b.diag.raise_if_any();
    b.check_top_level();
    b.read_pipeline_table(host_dirs);
    b.read_instances();
    b.resolve_instance_options();
    b.read_stages();
    b.diag.raise_if_any();
    return Pipeline(std::move(b.impl));
  }

 private:
  explicit PipelineBuilder(Document& d) : doc(d), impl(std::make_unique<Pipeline::Impl>()), resolved(impl->resolved) {
    impl->source = doc.source_name();
  }

  Document& doc;
  Diagnostics diag;
  std::unique_ptr<Pipeline::Impl> impl;
  json& resolved;
  json pconf;
  std::vector<SearchDir> dirs;
  std::unique_ptr<Registry> registry;

  void check_top_level() {
    for (auto&& [k, v] : doc.root()) {
      std::string key(k.str());
      if (std::find(kSections.begin(), kSections.end(), key) != kSections.end()) {
        if (!v.is_table())
          diag.error(doc.where(v, key), "'" + key + "' must be a table ([" + key + "]), not a " + toml_type_name(v));
        continue;
      }
      std::string msg = "unknown key '" + key + "'";
      std::string guess = did_you_mean(key, kSections);
      if (!guess.empty()) msg += " (did you mean '" + guess + "'?)";
      diag.error(doc.where(k.source(), key), msg + "; top-level tables are: " + join(kSections));
    }
  }

  // [pipeline]: name, work_dir, once_per, and the plugin search path (its plugin_dirs first).
  void read_pipeline_table(const std::vector<SearchDir>& host_dirs) {
    const toml::table* ptable = doc.root().get_as<toml::table>("pipeline");
    if (!ptable) {
      diag.error(doc.source_name(), "missing [pipeline] table (it lists the stages to run: stages = [\"info\"])");
      diag.raise_if_any();
    }
    pconf = validate_table(doc, *ptable, "pipeline", pipeline_schema(), {}, diag, &impl->locations);
    resolved["pipeline"] = pconf;
    impl->name = pconf.value("name", "");
    if (impl->name.empty()) {
      fs::path src(doc.source_name());
      impl->name = src.has_stem() && src.stem().string()[0] != '<' ? src.stem().string() : "pipeline";
      resolved["pipeline"]["name"] = impl->name;
    }
    std::string wd = pconf.value("work_dir", "");
    impl->work_dir = wd.empty() ? (doc.base_dir() / "runs" / impl->name) : fs::path(wd);
    resolved["pipeline"]["work_dir"] = impl->work_dir.string();
    impl->once_per_node = pconf.value("once_per", "job") == "node";
    for (const auto& d : pconf.value("plugin_dirs", json::array())) dirs.push_back({fs::path(d.get<std::string>()), "plugin_dirs"});
    dirs.insert(dirs.end(), host_dirs.begin(), host_dirs.end());
    registry = std::make_unique<Registry>(dirs);
    impl->dirs = dirs;
  }

  std::string search_text() const {
    std::string s;
    for (const auto& d : dirs) s += "\n    " + d.dir.string() + " (" + d.origin + ")";
    return s;
  }

  // [backends.X], [models.X], [datasets.X], [judges.X]
  void read_instances() {
    for (const std::string kind : {VHOST_KIND_BACKEND, VHOST_KIND_MODEL, VHOST_KIND_DATASET, VHOST_KIND_JUDGE}) {
      const toml::table* sec = doc.root().get_as<toml::table>(kind_section(kind));
      if (!sec) continue;
      for (auto&& [k, v] : *sec) read_instance(kind, std::string(k.str()), k.source(), v);
    }
  }

  void read_instance(const std::string& kind, const std::string& id, const toml::source_region& key_at, const toml::node& v) {
    const std::string section = kind_section(kind), ref = section + "." + id;
    if (!valid_id(id)) return diag.error(doc.where(key_at, ref), "'" + id + "' is not a valid instance name (letters, digits, _ and -)");
    const toml::table* t = v.as_table();
    if (!t) return diag.error(doc.where(v, ref), ref + ": expected a table ([" + ref + "]) with plugin = \"...\", got " + toml_type_name(v));
    const toml::node* pn = t->get("plugin");
    if (!pn)
      return diag.error(doc.where(*t, ref), "missing required key '" + ref + ".plugin' (which " + kind +
                                                " plugin to use; available: " + join(registry->names(kind)) + ")");
    if (!pn->is_string()) return diag.error(doc.where(*pn, ref + ".plugin"), ref + ".plugin: expected a string, got " + toml_type_name(*pn));
    InstanceDecl decl;
    decl.ref = ref;
    decl.kind = kind;
    decl.plugin = pn->as_string()->get();
    const std::string at = doc.where(*pn, ref + ".plugin");
    impl->locations[ref + ".plugin"] = at;
    const Candidate* c = registry->find(kind, decl.plugin);
    if (!c) {
      auto names = registry->names(kind);
      std::string msg = ref + ".plugin: no " + kind + " plugin named '" + decl.plugin + "'";
      std::string guess = did_you_mean(decl.plugin, names);
      if (!guess.empty()) msg += " (did you mean '" + guess + "'?)";
      msg += "; available: " + (names.empty() ? std::string("none") : join(names)) + "; searched (file names vhost_" + kind +
             "_NAME.so):" + search_text();
      return diag.error(at, msg);
    }
    try {
      decl.loaded = Registry::load(*c);
    } catch (const PluginError& e) {
      return diag.error(at, ref + ".plugin: " + e.what());
    }
    decl.config = validate_table(doc, *t, ref, decl.loaded->schema, {"plugin"}, diag, &impl->locations);
    resolved[section][id] = decl.config;
    resolved[section][id]["plugin"] = decl.plugin;
    impl->instances.push_back(std::move(decl));
  }

  bool declared(const std::string& ref) const {
    return std::any_of(impl->instances.begin(), impl->instances.end(), [&](const InstanceDecl& d) { return d.ref == ref; });
  }

  // The declared instances an instance option's value can mean: the one it names ("cpu" or
  // "backends.cpu"), or, for an empty value, every instance of the kind.
  std::vector<const InstanceDecl*> candidates(const std::string& kind, const std::string& value) const {
    const std::string section = kind_section(kind);
    std::vector<const InstanceDecl*> out;
    const std::string full = value.empty() ? "" : value.rfind(section + ".", 0) == 0 ? value : section + "." + value;
    for (const auto& d : impl->instances)
      if (value.empty() ? d.kind == kind : d.ref == full) out.push_back(&d);
    return out;
  }

  // A reference to an instance of `kind`: its name under the kind's section, or its full id.
  // Empty means the only one of that kind. Returns the full id, or "" when none is declared and
  // `none_error` is empty; nullopt once a problem is reported.
  std::optional<std::string> resolve_ref(const std::string& kind, const std::string& value, const std::string& at,
                                         const std::string& keypath, const std::string& none_error) {
    const std::string section = kind_section(kind);
    auto found = candidates(kind, value);
    if (found.size() == 1) return found[0]->ref;
    if (!value.empty()) {
      diag.error(at, keypath + ": no [" + (value.rfind(section + ".", 0) == 0 ? value : section + "." + value) + "] is declared");
      return std::nullopt;
    }
    std::vector<std::string> names;
    for (const auto* d : found) names.push_back(d->ref.substr(section.size() + 1));
    if (names.size() > 1)
      diag.error(at, keypath + ": several " + section + " are declared (" + join(names) + "); say which one");
    else if (!none_error.empty())
      diag.error(at, none_error);
    else
      return std::string();
    return std::nullopt;
  }

  // Plugin options of type "instance"; the instances they name are created first.
  void resolve_instance_options() {
    for (auto& d : impl->instances) {
      for (const auto& spec : d.loaded->schema) {
        if (spec.type != "instance" || !d.config.contains(spec.key)) continue;
        std::string kp = d.ref + "." + spec.key;
        std::string at = impl->locations.count(kp) ? impl->locations[kp] : impl->locations[d.ref + ".plugin"];
        auto full = resolve_ref(spec.instance_kind, d.config[spec.key].get<std::string>(), at, kp, "");
        if (!full) continue;
        if (*full == d.ref) {
          diag.error(at, kp + ": an instance cannot depend on itself");
          continue;
        }
        d.config[spec.key] = *full;
        resolved[kind_section(d.kind)][d.ref.substr(kind_section(d.kind).size() + 1)][spec.key] = *full;
        if (!full->empty()) d.deps.push_back(*full);
      }
    }
  }

  // A stage's schema with the options a plugin adds to it (StageType::plugin_options), when the
  // stage's instance option names one instance (an unresolvable name is reported elsewhere).
  Schema with_plugin_options(const StageType& stype, const toml::table& t, const std::string& sref) {
    Schema schema = stype.schema;
    const auto& [key, tool] = stype.plugin_options;
    if (key.empty()) return schema;
    std::string value;
    if (const toml::node* n = t.get(key); n && n->is_string()) value = n->as_string()->get();
    auto found = candidates(stype.refs.at(key), value);
    if (found.size() != 1 || found[0]->kind != stype.refs.at(key) || !found[0]->loaded) return schema;
    const InstanceDecl* target = found[0];
    try {
      auto extra = model_tool_if_offered(*target->loaded, tool, json::object());
      if (!extra) return schema;
      for (auto& o : schema_from_json(extra->dump(), target->loaded->label() + ", tool '" + tool + "'")) {
        if (std::none_of(schema.begin(), schema.end(), [&](const OptionSpec& s) { return s.key == o.key; }))
          schema.push_back(std::move(o));  // the stage's own option wins
      }
    } catch (const std::exception& e) {
      diag.error(impl->locations[target->ref + ".plugin"], sref + ": " + e.what());
    }
    return schema;
  }

  // [stages.X], in the order pipeline.stages gives; a table no stage lists is an error.
  void read_stages() {
    const toml::table* stables = doc.root().get_as<toml::table>("stages");
    impl->order = pconf.value("stages", std::vector<std::string>{});
    std::set<std::string> seen;
    for (std::size_t i = 0; i < impl->order.size(); ++i) {
      const std::string& id = impl->order[i];
      const std::string at = impl->locations.count("pipeline.stages") ? impl->locations["pipeline.stages"] : doc.source_name();
      if (!valid_id(id)) {
        diag.error(at, "pipeline.stages[" + std::to_string(i) + "]: '" + id + "' is not a valid stage name");
        continue;
      }
      if (!seen.insert(id).second) {
        diag.error(at, "pipeline.stages: '" + id + "' is listed twice");
        continue;
      }
      read_stage(id, stables, at);
    }
    if (stables)
      for (auto&& [k, v] : *stables) {
        std::string id(k.str());
        if (!seen.count(id))
          diag.error(doc.where(k.source(), "stages." + id),
                     "stage '" + id + "' is defined but not listed in pipeline.stages (add it there, or remove it)");
      }
  }

  // The stage type a [stages.ID] table names (its `type`, else its id), or null once reported.
  const StageType* stage_type(const std::string& id, const toml::table& t, const std::string& at) {
    const std::string sref = "stages." + id;
    std::string type = id;
    if (const toml::node* tn = t.get("type")) {
      if (!tn->is_string()) {
        diag.error(doc.where(*tn, sref + ".type"), sref + ".type: expected a string");
        return nullptr;
      }
      type = tn->as_string()->get();
    }
    if (const StageType* stype = find_stage_type(type)) return stype;
    std::vector<std::string> names;
    for (const auto& s : stage_types()) names.push_back(s.type);
    const std::string where = t.get("type") ? doc.where(*t.get("type"), sref + ".type") : at;
    std::string msg = (t.get("type") ? sref + ".type" : "pipeline.stages") + ": unknown stage type '" + type + "'";
    std::string guess = did_you_mean(type, names);
    if (!guess.empty()) msg += " (did you mean '" + guess + "'?)";
    diag.error(where, msg + "; known types: " + join(names) + (t.get("type") ? "" : " (or add [" + sref + "] with type = \"...\")"));
    return nullptr;
  }

  void read_stage(const std::string& id, const toml::table* stables, const std::string& at) {
    const std::string sref = "stages." + id;
    const toml::table* st = stables ? stables->get_as<toml::table>(id) : nullptr;
    if (stables && stables->get(id) && !st) return diag.error(doc.where(*stables->get(id), sref), sref + ": expected a table");
    toml::table empty;
    const toml::table& t = st ? *st : empty;
    const StageType* stype = stage_type(id, t, at);
    if (!stype) return;
    StageDecl sd;
    sd.id = id;
    sd.type = stype;
    sd.config = validate_table(doc, t, sref, with_plugin_options(*stype, t, sref), {"type"}, diag, &impl->locations);
    for (const auto& [key, kind] : stype->refs) {  // references to instances
      const std::string kat = impl->locations.count(sref + "." + key) ? impl->locations[sref + "." + key] : st ? doc.where(*st, sref) : at;
      auto full = resolve_ref(kind, sd.config.value(key, ""), kat, sref + "." + key,
                              sref + ": this " + stype->type + " stage needs a " + kind + ": declare one under [" + kind_section(kind) +
                                  ".NAME]");
      if (full) sd.config[key] = *full;
    }
    for (const auto& key : stype->ref_lists)
      for (const auto& r : sd.config.value(key, json::array()))
        if (!declared(r.get<std::string>()))
          diag.error(impl->locations.count(sref + "." + key) ? impl->locations[sref + "." + key] : at,
                     sref + "." + key + ": '" + r.get<std::string>() +
                         "' is not a declared instance (write it as section.name, e.g. backends.cpu)");
    resolved["stages"][id] = sd.config;
    resolved["stages"][id]["type"] = stype->type;
    impl->stages[id] = std::move(sd);
  }
};

Pipeline Host::load_file(const fs::path& file, const std::vector<std::string>& overrides) const {
  return PipelineBuilder::build(Document::from_file(file), overrides, impl_->options, impl_->dirs);
}

Pipeline Host::load_string(const std::string& toml, const std::string& source_name,
                           const std::vector<std::string>& overrides, const fs::path& base_dir) const {
  return PipelineBuilder::build(Document::from_string(toml, source_name, base_dir), overrides, impl_->options, impl_->dirs);
}

Pipeline Host::load_json(const json& pipeline, const std::string& source_name,
                         const std::map<std::string, std::string>& origins) const {
  return PipelineBuilder::build(Document::from_json(pipeline, source_name, origins), {}, impl_->options, impl_->dirs);
}

static std::string now_iso8601() {
  std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  std::ostringstream ss;
  ss << std::put_time(&tm, "%Y-%m-%dT%H:%M:%SZ");
  return ss.str();
}

namespace {

// This process's place in a job of several (vhost launch, torchrun, Slurm set these).
struct RankEnv {
  int rank = 0, local_rank = 0, world = 1;
};
RankEnv rank_env() {
  auto num = [](const char* name, int def) {
    const char* v = std::getenv(name);
    if (!v || !*v) return def;
    char* end = nullptr;
    long x = std::strtol(v, &end, 10);
    if (*end != '\0' || x < 0 || x > (1 << 24)) throw ConfigError(std::string("the environment variable ") + name + " = '" + v + "' is not a rank number");
    return static_cast<int>(x);
  };
  RankEnv r;
  r.world = std::max(1, num("WORLD_SIZE", 1));
  r.rank = num("RANK", 0);
  r.local_rank = num("LOCAL_RANK", r.rank);
  return r;
}

// How long the other ranks wait while one runs a stage alone (a prepare of all of ShareGPT
// takes a while); a rank that dies ends the wait at once.
constexpr double kStageWaitSeconds = 24 * 3600;

// One run's instances: created on first use (those they name first), published in the run's
// context for the plugins' lookups (another run in this process has its own), destroyed in the
// reverse order of creation.
class RunInstances {
 public:
  RunInstances(const Pipeline& pipeline, const Pipeline::Impl& p) : pipeline_(pipeline), p_(p) {}
  ~RunInstances() { clear(); }

  Instance& get(const std::string& ref) {
    auto it = live_.find(ref);
    if (it != live_.end()) return *it->second;
    for (const auto& d : p_.instances) {
      if (d.ref != ref) continue;
      if (!creating_.insert(ref).second)
        throw ConfigError(pipeline_.where(ref + ".plugin") + ": " + ref + ": instances depend on each other in a cycle");
      for (const auto& dep : d.deps) get(dep);
      creating_.erase(ref);
      spdlog::debug("creating {} ({})", ref, d.loaded->label());
      auto inst = std::make_unique<Instance>(d.loaded, ref, d.config, p_.locations, p_.source, context_.get());
      created_.push_back(ref);
      return *(live_[ref] = std::move(inst));
    }
    throw Error("no instance '" + ref + "' in this pipeline");
  }

  void clear() {
    for (auto it = created_.rbegin(); it != created_.rend(); ++it) live_.erase(*it);
    created_.clear();
    group_ = nullptr;
  }

  // Under several processes a stage that is not collective runs on one rank (rank 0, or local
  // rank 0 with once_per = "node") while the others wait at the barrier of the pipeline's
  // backend whose process group spans the job; they go on together once it has written its files.
  Instance& process_group(int world_size) {
    if (group_) return *group_;
    for (const auto& d : p_.instances) {
      if (d.loaded->kind != VHOST_KIND_BACKEND) continue;
      Instance& b = get(d.ref);
      auto [r, world] = b.backend_process_group();
      if (world == world_size) return *(group_ = &b);
      if (world > 1)
        throw Error(d.ref + " has a process group of " + std::to_string(world) + " ranks, but WORLD_SIZE is " +
                    std::to_string(world_size));
    }
    throw ConfigError("WORLD_SIZE is " + std::to_string(world_size) +
                      ", but no backend of this pipeline runs a process group to coordinate the ranks with "
                      "(declare one, e.g. [backends.cpu] plugin = \"cpu\")");
  }

 private:
  const Pipeline& pipeline_;
  const Pipeline::Impl& p_;
  std::shared_ptr<vhost_context> context_ = new_run_context();  // outlives the instances below
  std::map<std::string, std::unique_ptr<Instance>> live_;
  std::vector<std::string> created_;
  std::set<std::string> creating_;
  Instance* group_ = nullptr;
};

}  // namespace

RunResult Host::run(const Pipeline& pipeline, const RunOptions& options) const {
  const Pipeline::Impl& p = *pipeline.impl_;
  std::ostream& out = options.out ? *options.out : std::cout;
  std::istream& in = options.in ? *options.in : std::cin;
  for (const auto& o : options.only)
    if (!p.stages.count(o)) throw ConfigError("--only " + o + ": no stage '" + o + "' in pipeline.stages (" + join(p.order) + ")");

  RunResult result;
  result.pipeline = p.name;
  result.work_dir = p.work_dir;
  // Under `vhost launch` every rank runs the pipeline; only rank 0 writes run.json.
  const RankEnv ranks = rank_env();
  result.report = p.work_dir / (ranks.rank != 0 ? "run.rank-" + std::to_string(ranks.rank) + ".json" : "run.json");
  std::error_code ec;
  fs::create_directories(p.work_dir, ec);
  if (ec) throw Error("cannot create work_dir " + p.work_dir.string() + ": " + ec.message());

  RunInstances instances(pipeline, *pipeline.impl_);
  std::function<Instance&(const std::string&)> get_instance = [&](const std::string& ref) -> Instance& {
    return instances.get(ref);
  };
  std::vector<std::string> declared;
  for (const auto& d : p.instances) declared.push_back(d.ref);
  json report = {{"pipeline", p.name}, {"source", p.source}, {"vhost", version()}, {"started", now_iso8601()},
                 {"stages", json::array()}, {"status", "running"}};
  auto write_report = [&] {
    std::ofstream f(result.report);
    f << report.dump(2) << "\n";
    if (!f) spdlog::warn("could not write {}", result.report.string());
  };
  std::vector<std::shared_ptr<void>> kept;  // background servers: stopped before the instances go
  auto teardown = [&] {
    while (!kept.empty()) kept.pop_back();
    instances.clear();
  };

  const bool lead = ranks.world == 1 || (p.once_per_node ? ranks.local_rank == 0 : ranks.rank == 0);

  for (const auto& id : p.order) {
    if (!options.only.empty() && std::find(options.only.begin(), options.only.end(), id) == options.only.end())
      continue;
    const StageDecl& sd = p.stages.at(id);
    const bool alone = ranks.world > 1 && !sd.type->every_rank;
    spdlog::info("stage '{}' ({}){}", id, sd.type->type,
                 alone ? (lead ? ", on this rank while the others wait"
                               : p.once_per_node ? ", waiting for local rank 0" : ", waiting for rank 0")
                       : "");
    StageContext ctx{id, sd.config, p.work_dir, out, declared, get_instance,
                     [&p](const std::string& plugin, const std::string& tool, const json& args) {
                       return model_tool_on(p.dirs, plugin, tool, args);  // the pipeline's plugin_dirs too
                     },
                     in, [&kept](std::shared_ptr<void> o) { kept.push_back(std::move(o)); }};
    auto t0 = std::chrono::steady_clock::now();
    StageResult r{id, sd.type->type, 0, json()};
    try {
      if (!alone) {
        r.output = sd.type->run(ctx);
      } else {
        if (lead) r.output = sd.type->run(ctx);
        Instance& group_backend = instances.process_group(ranks.world);  // a pipeline without one is a ConfigError
        try {
          group_backend.backend_barrier(kStageWaitSeconds);
        } catch (const std::exception& e) {
          throw Error(std::string(lead ? "after running it, waiting for the other ranks: "
                                       : "waiting for the rank that runs it: ") + e.what());
        }
        if (!lead) r.output = {{"ran_on", p.once_per_node ? "local rank 0" : "rank 0"}};
      }
    } catch (const std::exception& e) {
      r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      report["stages"].push_back({{"id", id}, {"type", r.type}, {"seconds", r.seconds}, {"error", e.what()}});
      report["status"] = "failed";
      report["finished"] = now_iso8601();
      write_report();
      teardown();
      if (dynamic_cast<const ConfigError*>(&e)) throw ConfigError(e.what());
      throw Error("stage '" + id + "' (" + r.type + ") failed: " + e.what());
    }
    r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    out.flush();  // the stage's text before the log line that follows it
    spdlog::info("stage '{}' done in {:.2f} s", id, r.seconds);
    report["stages"].push_back({{"id", id}, {"type", r.type}, {"seconds", r.seconds}, {"output", r.output}});
    result.stages.push_back(std::move(r));
  }
  teardown();
  report["status"] = "ok";
  report["finished"] = now_iso8601();
  write_report();
  return result;
}

}  // namespace vhost::host
