// Internal: option helpers the stage tables share.
#pragma once

#include "runtime/config.hpp"

#include <vhost/host/sampling.hpp>

namespace vhost::host {

// A sampling option with the one range every entry point checks (vhost/host/sampling.hpp).
inline OptionSpec sampling_option(const sampling::Range& r, const char* type, json default_value) {
  OptionSpec o = option_spec(r.key, type, std::move(default_value), r.help, r.min, r.max);
  o.min_open = r.min_open;
  return o;
}

}  // namespace vhost::host
