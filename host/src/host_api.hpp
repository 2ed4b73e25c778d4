// Internal: the host's half of the C ABI.
#pragma once

#include <vhost/c/vhost.h>

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

// The live instances `find_extension` may hand out, by their pipeline id ("backends.cpu").
void publish_instance(const std::string& ref, Instance* instance);
void withdraw_instance(const std::string& ref);

}  // namespace vhost::host
