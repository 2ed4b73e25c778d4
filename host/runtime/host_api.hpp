// Internal: the host's half of the C ABI.
#pragma once

#include <vhost/c/vhost.h>

#include <functional>
#include <memory>
#include <optional>
#include <string>

namespace vhost::host {

const vhost_host_api* host_api_table();

struct StatusInfo {
  int32_t code = 0;
  std::string message, key;
};
// Reads and frees a status a plugin returned; nullopt for success (NULL).
std::optional<StatusInfo> take_status(vhost_status* s);
const char* code_name(int32_t code);

// One pipeline run: the live instances that lookup_instance / lookup_extension (ABI 1.6) hand
// out, by their pipeline id ("backends.cpu"). Two runs in one process each have their own.
std::shared_ptr<vhost_context> new_run_context();

// What a run knows of an instance: enough to hand its tables to another plugin (an Instance
// publishes itself; this file knows nothing else of it).
struct PublishedInstance {
  std::string id, kind, label;
  std::string torch_abi;  // empty: the plugin uses no libtorch
  const void* kind_iface = nullptr;
  void* self = nullptr;
  std::function<const void*(const std::string& name)> extension;
};
void publish_instance(vhost_context* run, PublishedInstance instance);
void withdraw_instance(vhost_context* run, const std::string& ref);

}  // namespace vhost::host
