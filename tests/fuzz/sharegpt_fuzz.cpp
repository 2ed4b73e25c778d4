// The ShareGPT reader (streaming JSON with UTF-8 repair), the HTML converter and both cleaning
// rule sets under libFuzzer, and the same entry point replaying a saved corpus (CTest). Every
// input must end in records cleaned or dropped, or a SyntaxError naming file, line and column.
#include "fastchat_rules.hpp"
#include "html.hpp"
#include "prepare.hpp"
#include "reader.hpp"

#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <string>

static void one_input(const uint8_t* data, size_t size) {
  using namespace vhost::sharegpt;
  // The reader streams from a file, as prepare runs it: the input goes to one (in /dev/shm
  // where there is one, so that a million inputs do not wear a disk).
  static const std::string file = (std::filesystem::exists("/dev/shm") ? std::string("/dev/shm") : std::filesystem::temp_directory_path().string()) +
                                  "/vhost-sharegpt-fuzz-" + std::to_string(::getpid()) + ".json";
  if (FILE* f = std::fopen(file.c_str(), "wb")) {
    std::fwrite(data, 1, size, f);
    std::fclose(f);
  }
  CleanOptions vhost_rules, fastchat_rules;
  vhost_rules.html = "always";  // every value through the HTML converter
  vhost_rules.reduce_rep = true;
  fastchat_rules.rules = "fastchat";
  fastchat_rules.skip_languages = {"ko"};
  fastchat_rules.reduce_rep = true;
  fastchat::Dedupe dedupe;
  std::map<std::string, std::uint64_t> notes;
  try {
    read_sharegpt(file, [&](Record&& r) {
      Cleaned c;
      if (!clean_record(r, vhost_rules, c, notes))
        for (const auto& m : c.messages) (void)fastchat::wrong_list_indices(m);
      if (!fastchat::clean_record(r, fastchat_rules, c, notes) && !dedupe.check(r, c)) (void)fastchat::optional_clean(c, fastchat_rules);
    });
  } catch (const SyntaxError&) {
  }
}

#include "fuzz_main.hpp"
