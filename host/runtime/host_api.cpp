#include "runtime/host_api.hpp"

#include <vhost/host/host.hpp>

#include <spdlog/spdlog.h>

#include <map>
#include <mutex>
#include <set>

struct vhost_status {
  int32_t code;
  std::string message;
  std::string key;
};

// One run's instances. The set of live runs serves the ABI 1.0/1.1 lookups, which name no run.
struct vhost_context {
  mutable std::mutex mu;  // lookups get a const context
  std::map<std::string, vhost::host::PublishedInstance> instances;
};

namespace vhost::host {

namespace {

std::mutex& runs_mutex() {
  static auto* m = new std::mutex;
  return *m;
}
std::set<vhost_context*>& live_runs() {
  static auto* r = new std::set<vhost_context*>;
  return *r;
}

// Where a lookup ended: the instance, or a vhost_code and a message.
struct Found {
  std::optional<PublishedInstance> inst;  // a copy: the lock is not held while it is used
  int32_t code = VHOST_OK;
  std::string error;
  explicit Found(const PublishedInstance& i) : inst(i) {}
  Found(int32_t c, std::string e) : code(c), error(std::move(e)) {}
};

Found in_run(const vhost_context* run, const std::string& ref) {
  std::lock_guard<std::mutex> lock(run->mu);
  auto it = run->instances.find(ref);
  if (it == run->instances.end())
    return Found(VHOST_ERR_CONFIG, "no instance '" + ref + "' in this pipeline");
  return Found(it->second);
}

// The ABI 1.0/1.1 lookups: every live run is searched, and a name two runs share is refused
// rather than guessed.
Found in_any_run(const std::string& ref) {
  std::lock_guard<std::mutex> lock(runs_mutex());
  Found f(VHOST_ERR_CONFIG, "no instance '" + ref + "' in this pipeline");
  int matches = 0;
  for (vhost_context* run : live_runs()) {
    std::lock_guard<std::mutex> rl(run->mu);
    auto it = run->instances.find(ref);
    if (it == run->instances.end()) continue;
    if (++matches == 1) f = Found(it->second);
  }
  if (matches > 1)
    return Found(VHOST_ERR_CONFIG,
            "instance '" + ref + "' exists in " + std::to_string(matches) +
                " pipelines running in this process, and the plugin asked without saying which (ABI 1.0 lookup): "
                "rebuild it against SDK 1.6, whose lookups name their run");
  return f;
}

vhost_status* status_new(int32_t code, const char* message, const char* key) {
  try {
    return new vhost_status{code == VHOST_OK ? VHOST_ERR_INTERNAL : code, message ? message : "",
                            key ? key : ""};
  } catch (...) {
    return nullptr;  // out of memory: the plugin's error becomes a success we cannot report
  }
}

void log(int32_t level, const char* plugin, const char* message) {
  auto lvl = level <= VHOST_LOG_TRACE   ? spdlog::level::trace
             : level == VHOST_LOG_DEBUG ? spdlog::level::debug
             : level == VHOST_LOG_INFO  ? spdlog::level::info
             : level == VHOST_LOG_WARN  ? spdlog::level::warn
                                        : spdlog::level::err;
  spdlog::log(lvl, "[{}] {}", plugin ? plugin : "?", message ? message : "");
}

Found of_kind(Found f, const std::string& kind) {
  if (f.inst && f.inst->kind != kind)
    return Found(VHOST_ERR_CONFIG,
                 "instance '" + f.inst->id + "' is a " + f.inst->kind + " (" + f.inst->label + "), not a " + kind);
  return f;
}

// An instance's extension table, with the torch ABI rule for "torch." names (`inst` a copy: `why`
// may be the Found that holds it).
const void* extension_of(PublishedInstance inst, const std::string& ext, const char* requester_abi,
                         Found& why) {
  if (ext.rfind("torch.", 0) == 0) {
    const std::string& mine = inst.torch_abi;
    std::string theirs = requester_abi ? requester_abi : "";
    if (mine.empty() || theirs != mine) {
      why = Found(VHOST_ERR_CONFIG,
             "refusing to pass libtorch objects ('" + ext + "') from " + inst.label + ": its torch ABI is '" +
                 (mine.empty() ? "none" : mine) + "' but the requesting plugin's is '" +
                 (theirs.empty() ? "none" : theirs) + "'; build both against the same libtorch");
      return nullptr;
    }
  }
  const void* t = inst.extension(ext);
  if (!t) why = Found(VHOST_ERR_UNSUPPORTED, "instance '" + inst.id + "' offers no extension '" + ext + "'");
  return t;
}

const void* find_extension(const char* ref, const char* name, const char* requester_abi) {
  if (!ref || !name) return nullptr;
  Found f = in_any_run(ref);  // the lock is not held during the plugin call below
  const void* t = f.inst ? extension_of(*f.inst, name, requester_abi, f) : nullptr;
  if (!t && f.code != VHOST_ERR_UNSUPPORTED) spdlog::error("a plugin asked for '{}' of '{}': {}", name, ref, f.error);
  return t;
}

const void* find_instance(const char* ref, const char* kind, void** self) {
  if (self) *self = nullptr;
  if (!ref || !kind || !self) return nullptr;
  Found f = of_kind(in_any_run(ref), kind);
  if (!f.inst) {
    spdlog::error("a plugin asked for {} instance '{}': {}", kind, ref, f.error);
    return nullptr;
  }
  *self = f.inst->self;
  return f.inst->kind_iface;
}

vhost_status* lookup_instance(const vhost_context* run, const char* ref, const char* kind, const void** table,
                              void** self) {
  if (table) *table = nullptr;
  if (self) *self = nullptr;
  if (!run || !ref || !kind || !table || !self)
    return status_new(VHOST_ERR_INVALID_ARGUMENT, "lookup_instance: a NULL argument", nullptr);
  Found f = of_kind(in_run(run, ref), kind);
  if (!f.inst) return status_new(f.code, f.error.c_str(), nullptr);
  *self = f.inst->self;
  *table = f.inst->kind_iface;
  return nullptr;
}

vhost_status* lookup_extension(const vhost_context* run, const char* ref, const char* name,
                               const char* requester_abi, const void** table) {
  if (table) *table = nullptr;
  if (!run || !ref || !name || !table)
    return status_new(VHOST_ERR_INVALID_ARGUMENT, "lookup_extension: a NULL argument", nullptr);
  Found f = in_run(run, ref);
  if (f.inst) *table = extension_of(*f.inst, name, requester_abi, f);
  if (!*table) return status_new(f.code, f.error.c_str(), nullptr);
  return nullptr;
}

int32_t status_code(const vhost_status* s) { return s ? s->code : VHOST_OK; }
const char* status_message(const vhost_status* s) { return s ? s->message.c_str() : ""; }
void status_free(vhost_status* s) { delete s; }

const vhost_host_api kApi = {
    sizeof(vhost_host_api), VHOST_ABI_MAJOR, VHOST_ABI_MINOR, VHOST_VERSION, &status_new, &log, &find_extension,
    &find_instance,         &status_code,    &status_message, &status_free,     &lookup_instance,
    &lookup_extension,
};

}  // namespace

const vhost_host_api* host_api_table() { return &kApi; }

std::optional<StatusInfo> take_status(vhost_status* s) {
  if (!s) return std::nullopt;
  StatusInfo info{s->code, std::move(s->message), std::move(s->key)};
  delete s;
  return info;
}

const char* code_name(int32_t code) {
  switch (code) {
    case VHOST_ERR_INVALID_ARGUMENT: return "invalid argument";
    case VHOST_ERR_CONFIG: return "configuration error";
    case VHOST_ERR_IO: return "I/O error";
    case VHOST_ERR_RUNTIME: return "runtime error";
    case VHOST_ERR_UNSUPPORTED: return "unsupported";
    case VHOST_ERR_CANCELLED: return "cancelled";
    case VHOST_ERR_INTERNAL: return "internal error";
    case VHOST_ERR_BUSY: return "busy";
    default: return "error";
  }
}

std::shared_ptr<vhost_context> new_run_context() {
  std::shared_ptr<vhost_context> run(new vhost_context, [](vhost_context* r) {
    {
      std::lock_guard<std::mutex> lock(runs_mutex());
      live_runs().erase(r);
    }
    delete r;
  });
  std::lock_guard<std::mutex> lock(runs_mutex());
  live_runs().insert(run.get());
  return run;
}

void publish_instance(vhost_context* run, PublishedInstance instance) {
  std::lock_guard<std::mutex> lock(run->mu);
  std::string ref = instance.id;
  run->instances[ref] = std::move(instance);
}

void withdraw_instance(vhost_context* run, const std::string& ref) {
  std::lock_guard<std::mutex> lock(run->mu);
  run->instances.erase(ref);
}

}  // namespace vhost::host
