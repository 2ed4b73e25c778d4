// Streams a ShareGPT JSON file (a top-level list of records) one record at a time, with memory
// bounded by the largest record, not the file. Invalid UTF-8 is repaired on the way in (each bad
// byte becomes U+FFFD) and the record is flagged, because the JSON parser would otherwise stop
// the whole run at the first bad byte of a hundreds-of-MB dump.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <stdexcept>
#include <string>

namespace vhost::sharegpt {

using json = nlohmann::json;

struct Record {
  std::uint64_t index = 0;  // position in the list, from 0
  std::uint64_t line = 0;   // line where it starts (from 1)
  json value;
  bool utf8_repaired = false;
};

// The file is not valid JSON, or not a list: what, where (file:line:col, byte offset).
class SyntaxError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct ReadTotals {
  std::uint64_t bytes = 0, records = 0, repaired_bytes = 0;
};

// Calls on_record for each element of the top-level list. Throws SyntaxError on malformed JSON
// (after delivering every record before the error) and std::runtime_error when unreadable.
ReadTotals read_sharegpt(const std::filesystem::path& file, const std::function<void(Record&&)>& on_record);

}  // namespace vhost::sharegpt
