// Internal: text put into the HTML and SVG files the host writes (reports, charts).
#pragma once

#include <string>

namespace vhost::host {

// `s` with <, >, & and " escaped: safe as element text and as a double-quoted attribute.
inline std::string html_escape(const std::string& s) {
  std::string o;
  o.reserve(s.size());
  for (char c : s) o += c == '<' ? "&lt;" : c == '>' ? "&gt;" : c == '&' ? "&amp;" : c == '"' ? "&quot;" : std::string(1, c);
  return o;
}

}  // namespace vhost::host
