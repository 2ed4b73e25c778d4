// A short fingerprint of a text that is the same across runs, builds and machines (std::hash is
// neither): FNV-1a, 64 bits, as 16 hex digits. For cache keys and "is this the same request",
// not for security.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>

namespace vhost {

inline std::string fingerprint(const std::string& s) {
  std::uint64_t h = 1469598103934665603ULL;
  for (unsigned char c : s) {
    h ^= c;
    h *= 1099511628211ULL;
  }
  char b[17];
  std::snprintf(b, sizeof b, "%016llx", static_cast<unsigned long long>(h));
  return b;
}

}  // namespace vhost
