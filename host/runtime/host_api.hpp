// Internal: the host's half of the C ABI.
#pragma once

#include <vhost/c/vhost.h>

#include <memory>
#include <optional>
#include <string>

namespace vhost::host {

class Instance;

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
void publish_instance(vhost_context* run, const std::string& ref, Instance* instance);
void withdraw_instance(vhost_context* run, const std::string& ref);

}  // namespace vhost::host
