#include "host_api.hpp"

#include "instance.hpp"
#include "registry.hpp"

#include <vhost/host/host.hpp>

#include <spdlog/spdlog.h>

#include <map>
#include <mutex>

struct vhost_status {
  int32_t code;
  std::string message;
  std::string key;
};

namespace vhost::host {

namespace {

std::mutex& directory_mutex() {
  static auto* m = new std::mutex;
  return *m;
}
std::map<std::string, Instance*>& directory() {
  static auto* d = new std::map<std::string, Instance*>;
  return *d;
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

const void* find_extension(const char* ref, const char* name, const char* requester_abi) {
  if (!ref || !name) return nullptr;
  Instance* inst = nullptr;
  {
    // Not held during the plugin call below, which may itself look up extensions.
    std::lock_guard<std::mutex> lock(directory_mutex());
    auto it = directory().find(ref);
    if (it != directory().end()) inst = it->second;
  }
  if (!inst) {
    spdlog::error("a plugin asked for '{}' of instance '{}', which does not exist in this pipeline", name, ref);
    return nullptr;
  }
  const LoadedPlugin& p = inst->plugin();
  std::string ext = name;
  if (ext.rfind("torch.", 0) == 0) {
    std::string mine = p.desc->torch_abi ? p.desc->torch_abi : "";
    std::string theirs = requester_abi ? requester_abi : "";
    if (mine.empty() || theirs != mine) {
      spdlog::error("refusing to pass libtorch objects ('{}') from {}: its torch ABI is '{}' but the "
                    "requesting plugin's is '{}'; build both against the same libtorch",
                    ext, p.label(), mine.empty() ? "none" : mine, theirs.empty() ? "none" : theirs);
      return nullptr;
    }
  }
  return inst->extension(ext);
}

const void* find_instance(const char* ref, const char* kind, void** self) {
  if (self) *self = nullptr;
  if (!ref || !kind || !self) return nullptr;
  Instance* inst = nullptr;
  {
    std::lock_guard<std::mutex> lock(directory_mutex());
    auto it = directory().find(ref);
    if (it != directory().end()) inst = it->second;
  }
  if (!inst) {
    spdlog::error("a plugin asked for instance '{}', which does not exist in this pipeline", ref);
    return nullptr;
  }
  if (inst->plugin().kind != kind) {
    spdlog::error("a plugin asked for '{}' as a {} instance, but it is a {} ({})", ref, kind, inst->plugin().kind,
                  inst->plugin().label());
    return nullptr;
  }
  *self = inst->self();
  return inst->plugin().desc->kind_iface;
}

int32_t status_code(const vhost_status* s) { return s ? s->code : VHOST_OK; }
const char* status_message(const vhost_status* s) { return s ? s->message.c_str() : ""; }
void status_free(vhost_status* s) { delete s; }

const vhost_host_api kApi = {
    sizeof(vhost_host_api), VHOST_ABI_MAJOR, VHOST_ABI_MINOR, VHOST_VERSION, &status_new, &log, &find_extension,
    &find_instance,         &status_code,    &status_message, &status_free,
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

void publish_instance(const std::string& ref, Instance* instance) {
  std::lock_guard<std::mutex> lock(directory_mutex());
  directory()[ref] = instance;
}

void withdraw_instance(const std::string& ref) {
  std::lock_guard<std::mutex> lock(directory_mutex());
  directory().erase(ref);
}

}  // namespace vhost::host
