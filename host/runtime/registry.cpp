#include "runtime/registry.hpp"

#include "runtime/host_api.hpp"

#include <boost/dll/runtime_symbol_info.hpp>
#include <boost/dll/shared_library.hpp>

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <cstdlib>
#include <map>
#include <mutex>
#include <regex>
#include <system_error>

namespace vhost::host {

std::string kind_section(const std::string& kind) { return kind + "s"; }

std::string LoadedPlugin::label() const {
  return kind + " plugin '" + name + "' (" + file.string() + ")";
}

static bool parse_file_name(const fs::path& file, std::string& kind, std::string& name) {
  static const std::regex re("^vhost_(backend|model|dataset|judge)_([a-z0-9][a-z0-9_-]*)\\.so$");
  std::smatch m;
  std::string fname = file.filename().string();
  if (!std::regex_match(fname, m, re)) return false;
  kind = m[1];
  name = m[2];
  return true;
}

Registry::Registry(std::vector<SearchDir> dirs) : dirs_(std::move(dirs)) {
  std::map<std::pair<std::string, std::string>, std::size_t> index;
  for (const auto& d : dirs_) {
    std::error_code ec;
    if (!fs::is_directory(d.dir, ec)) continue;
    std::vector<fs::path> files;
    for (const auto& e : fs::directory_iterator(d.dir, ec)) files.push_back(e.path());
    std::sort(files.begin(), files.end());
    for (const auto& f : files) {
      Candidate c;
      if (!parse_file_name(f, c.kind, c.name)) continue;
      auto key = std::make_pair(c.kind, c.name);
      auto it = index.find(key);
      if (it != index.end()) {
        candidates_[it->second].shadowed.push_back(f);
        continue;
      }
      c.file = f;
      c.origin = d.origin;
      index[key] = candidates_.size();
      candidates_.push_back(std::move(c));
    }
  }
}

const Candidate* Registry::find(const std::string& kind, const std::string& name) const {
  for (const auto& c : candidates_)
    if (c.kind == kind && c.name == name) return &c;
  return nullptr;
}

std::vector<std::string> Registry::names(const std::string& kind) const {
  std::vector<std::string> out;
  for (const auto& c : candidates_)
    if (c.kind == kind) out.push_back(c.name);
  return out;
}

static std::string abi_string(unsigned major, unsigned minor) {
  return std::to_string(major) + "." + std::to_string(minor);
}

static std::shared_ptr<const LoadedPlugin> load_uncached(const Candidate& c) {
  auto fail = [&](const std::string& why) -> PluginError {
    return PluginError(c.kind + " plugin '" + c.name + "' (" + c.file.string() + "): " + why);
  };
  auto p = std::make_shared<LoadedPlugin>();
  p->kind = c.kind;
  p->name = c.name;
  p->file = c.file;
  try {
    // rtld_now: an unresolved symbol fails here, with a message, instead of killing the
    // process at the first call that needs it.
    p->lib = std::make_shared<boost::dll::shared_library>(
        c.file, boost::dll::load_mode::rtld_now | boost::dll::load_mode::rtld_local);
  } catch (const std::exception& e) {
    throw fail(std::string("failed to load: ") + e.what());
  }
  // The entry point: an extern "C" function since ABI 1.6; a Boost.DLL data alias (a variable
  // holding the function's address) in plugins built against SDK 1.0-1.5.
  vhost_plugin_entry_fn entry = nullptr;
  try {
    if (p->lib->has(VHOST_PLUGIN_ENTRY_FUNCTION))
      entry = &p->lib->get<const vhost_plugin_desc*(const vhost_host_api*)>(VHOST_PLUGIN_ENTRY_FUNCTION);
    else if (p->lib->has(VHOST_PLUGIN_ENTRY_SYMBOL))
      entry = p->lib->get_alias<const vhost_plugin_desc*(const vhost_host_api*)>(VHOST_PLUGIN_ENTRY_SYMBOL);
    else
      throw fail("not a vhost plugin: it exports neither '" VHOST_PLUGIN_ENTRY_FUNCTION "' (ABI 1.6) nor '"
                 VHOST_PLUGIN_ENTRY_SYMBOL "' (ABI 1.0-1.5); build it with VHOST_PLUGIN(...) and vhost_add_plugin, "
                 "or define VHOST_PLUGIN_EXPORT const vhost_plugin_desc* " "vhost_plugin_get(const vhost_host_api*)");
  } catch (const PluginError&) {
    throw;
  } catch (const std::exception& e) {
    throw fail(std::string("cannot read its entry point: ") + e.what());
  }
  const vhost_plugin_desc* src = entry ? entry(host_api_table()) : nullptr;
  if (!src) throw fail("its entry point returned no descriptor");
  // The first three fields have been there since ABI 1.0; check versions before anything else.
  if (src->abi_major != VHOST_ABI_MAJOR)
    throw fail("built for vhost SDK ABI " + abi_string(src->abi_major, src->abi_minor) +
               ", but this host implements ABI " + abi_string(VHOST_ABI_MAJOR, VHOST_ABI_MINOR) +
               " (major versions differ): rebuild the plugin against this SDK");
  if (src->abi_minor > VHOST_ABI_MINOR)
    throw fail("built for vhost SDK ABI " + abi_string(src->abi_major, src->abi_minor) +
               ", newer than this host's ABI " + abi_string(VHOST_ABI_MAJOR, VHOST_ABI_MINOR) +
               ": upgrade vhost or rebuild the plugin against this SDK");
  // ABI 1.0's descriptor ends at get_extension; a longer one is copied up to what this host
  // knows, a shorter one (an older minor) leaves the newer slots NULL.
  constexpr std::size_t kDesc10 = offsetof(vhost_plugin_desc, get_extension) + sizeof(src->get_extension);
  if (src->struct_size < kDesc10)
    throw fail("its descriptor is " + std::to_string(src->struct_size) + " bytes, shorter than ABI 1.0's " +
               std::to_string(kDesc10));
  std::memcpy(&p->desc_copy, src, std::min<std::size_t>(src->struct_size, sizeof(vhost_plugin_desc)));
  const vhost_plugin_desc* d = &p->desc_copy;
  if (!d->name || !d->kind || !d->version || (!d->create && !d->create_in) || !d->destroy || !d->describe ||
      !d->kind_iface || !d->get_extension)
    throw fail("its descriptor leaves a required field empty");
  if (c.kind != d->kind || c.name != d->name)
    throw fail(std::string("the file name says ") + c.kind + " '" + c.name + "' but the plugin says it is " +
               d->kind + " '" + d->name + "'");
  if (*static_cast<const uint32_t*>(d->kind_iface) < sizeof(uint32_t))
    throw fail("its " + c.kind + " table is malformed");
  p->desc = d;
  p->schema = schema_from_json(d->options_json ? d->options_json : "[]",
                               c.kind + " plugin '" + c.name + "' (" + c.file.string() + ")");
  return p;
}

std::shared_ptr<const LoadedPlugin> Registry::load(const Candidate& c) {
  // Process-wide and deliberately leaked: a library, once loaded, stays mapped until exit, so no
  // object, static destructor or thread of a plugin ever outlives its code.
  static auto* mu = new std::mutex;
  static auto* cache = new std::map<std::string, std::shared_ptr<const LoadedPlugin>>;
  std::error_code ec;
  std::string key = fs::weakly_canonical(c.file, ec).string();
  std::lock_guard<std::mutex> lock(*mu);
  auto it = cache->find(key);
  if (it != cache->end()) return it->second;
  auto p = load_uncached(c);
  cache->emplace(key, p);
  return p;
}

std::vector<SearchDir> standard_search_dirs(bool use_env, bool use_defaults) {
  std::vector<SearchDir> out;
  if (use_env) {
    if (const char* env = std::getenv("VHOST_PLUGIN_PATH")) {
      std::string s = env;
      std::size_t start = 0;
      while (start <= s.size()) {
        auto end = s.find(':', start);
        if (end == std::string::npos) end = s.size();
        if (end > start) out.push_back({fs::path(s.substr(start, end - start)), "VHOST_PLUGIN_PATH"});
        start = end + 1;
      }
    }
  }
  if (use_defaults) {
    // The plugins folder beside this library: build/lib/vhost/plugins in a build tree,
    // PREFIX/lib/vhost/plugins once installed.
    boost::dll::fs::error_code bec;
    fs::path self = fs::path(boost::dll::this_line_location(bec).string());
    std::error_code ec;
    fs::path beside = fs::weakly_canonical(self.parent_path() / "vhost" / "plugins", ec);
    bool in_build = fs::equivalent(beside, VHOST_BUILD_PLUGIN_DIR, ec);
    if (!bec) out.push_back({beside, in_build ? "build tree" : "install prefix"});
    fs::path prefix = VHOST_INSTALL_PLUGIN_DIR;
    if (bec || !fs::equivalent(prefix, beside, ec)) out.push_back({prefix, "install prefix"});
  }
  return out;
}

}  // namespace vhost::host
