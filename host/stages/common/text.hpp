// Internal: how stages print numbers and durations for people (not 5.847e-05 s).
#pragma once

#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdio>
#include <ostream>
#include <string>

namespace vhost::host {

using json = nlohmann::json;

inline std::string fmt(const char* f, double v) {
  char b[64];
  std::snprintf(b, sizeof b, f, v);
  return b;
}

// "0.058 ms", "2.35 s", "312 s": a duration as a person reads it (not 5.847e-05).
inline std::string human_seconds(double s) {
  if (s < 1e-3) return fmt("%.3f ms", s * 1e3);
  if (s < 1) return fmt("%.1f ms", s * 1e3);
  if (s < 100) return fmt("%.2f s", s);
  return fmt("%.0f s", s);
}

inline void print_json_fields(std::ostream& out, const json& j, const std::string& indent) {
  for (auto it = j.begin(); it != j.end(); ++it) {
    if (it->is_object()) {
      out << indent << it.key() << ":\n";
      print_json_fields(out, *it, indent + "  ");
    } else {
      out << indent << it.key() << ": " << (it->is_string() ? it->get<std::string>() : it->dump()) << "\n";
    }
  }
}

// "1h05m", "3m20s": a training run's ETA.
inline std::string duration_str(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  char b[32];
  auto t = static_cast<long long>(s + 0.5);
  if (t >= 3600)
    std::snprintf(b, sizeof b, "%lldh%02lldm", t / 3600, (t / 60) % 60);
  else
    std::snprintf(b, sizeof b, "%lldm%02llds", t / 60, t % 60);
  return b;
}

}  // namespace vhost::host
