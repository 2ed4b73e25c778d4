#pragma once

#include <stdexcept>
#include <string>

namespace vhost::host {

// Everything the host throws derives from this; the message is complete and user-facing.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A pipeline file (or --set override) is wrong. The message holds one line per problem, each
// starting with "file:line:col:" (or "--set key=value:") and the key path.
class ConfigError : public Error {
 public:
  using Error::Error;
};

// A plugin is missing, incompatible, failed to load, or failed in one of its calls. The
// message names the plugin and its file.
class PluginError : public Error {
 public:
  using Error::Error;
};

}  // namespace vhost::host
