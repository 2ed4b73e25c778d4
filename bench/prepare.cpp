// bench/prepare: data preparation throughput and memory on a synthetic ShareGPT dump, against a
// parse-only single pass over the same file in the same run.
//
//   bench_prepare [--mb 1024] [--dir /tmp/vhost-bench-prepare] [--tokenizer FILE.model]
//
// The synthetic file (written once into --dir, reused after) mixes ChatGPT-style HTML answers
// (paragraphs, code blocks with copy buttons, lists), Markdown answers, multi-turn chats long
// enough to be split at 2048 tokens, 1% exact duplicates and 0.1% malformed records. The
// tokenizer is the real LLaMA-2 one from ../shared when present, else one trained on the docs.
// Peak RSS is measured per phase (reset through /proc/self/clear_refs), to show it is bounded by
// a constant, not by the file size: run with two --mb values and compare.
#include "prepare.hpp"
#include "reader.hpp"
#include "tokenizer.hpp"

#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

static long peak_rss_kb() {
  std::ifstream s("/proc/self/status");
  std::string line;
  while (std::getline(s, line))
    if (line.rfind("VmHWM:", 0) == 0) return std::stol(line.substr(6));
  return -1;
}
static void reset_peak_rss() { std::ofstream("/proc/self/clear_refs") << "5"; }

static const char* kWords[] = {"the",     "model",  "data",    "a",        "function", "returns", "value",  "when",
                               "you",     "can",    "use",     "this",     "to",       "of",      "and",    "in",
                               "train",   "token",  "memory",  "file",     "server",   "request", "python", "list",
                               "example", "simple", "because", "question", "answer",   "time",    "each",   "first",
                               "number",  "string", "network", "layer",    "loss",     "batch",   "speed",  "result"};

static std::string sentence(std::mt19937& rng, int words) {
  std::string s;
  for (int i = 0; i < words; ++i) {
    s += kWords[rng() % (sizeof kWords / sizeof *kWords)];
    s += i + 1 < words ? " " : ".";
  }
  s[0] = static_cast<char>(std::toupper(s[0]));
  return s;
}

static std::string html_answer(std::mt19937& rng) {
  std::string h = "<div class=\"markdown prose w-full break-words dark:prose-invert light\"><p>" + sentence(rng, 20) + " " +
                  sentence(rng, 15) + "</p>";
  h += "<pre><div class=\"bg-black mb-4 rounded-md\"><div class=\"flex items-center\"><span>python</span><button "
       "class=\"flex ml-auto gap-2\"><svg viewBox=\"0 0 24 24\"><path d=\"M16 4h2\"></path></svg>Copy code</button></div>"
       "<div class=\"p-4\"><code class=\"!whitespace-pre hljs language-python\">";
  for (int i = 0; i < 6; ++i) h += "x" + std::to_string(i) + " = compute(" + std::to_string(rng() % 100) + ")\n";
  h += "</code></div></div></pre><ol>";
  for (int i = 0; i < 4; ++i) h += "<li><p><strong>" + sentence(rng, 2) + "</strong> " + sentence(rng, 12) + "</p></li>";
  h += "</ol><p>" + sentence(rng, 25) + "</p></div>";
  return h;
}

static void write_synthetic(const fs::path& file, std::size_t mb) {
  std::mt19937 rng(1234);
  std::ofstream out(file, std::ios::binary);
  out << "[\n";
  const std::size_t target = mb << 20;
  std::size_t written = 2, n = 0;
  std::string last;
  while (written < target) {
    nlohmann::json rec;
    if (n % 1000 == 999) {
      rec = {{"id", "bad" + std::to_string(n)}, {"conversations", "not a list"}};
    } else if (n % 100 == 50 && !last.empty()) {
      rec = nlohmann::json::parse(last);
      rec["id"] = "dup" + std::to_string(n);
    } else {
      nlohmann::json turns = nlohmann::json::array();
      int pairs = 1 + static_cast<int>(rng() % 4);
      if (n % 20 == 0) pairs = 30;  // a long chat: split at max_length
      for (int p = 0; p < pairs; ++p) {
        turns.push_back({{"from", "human"}, {"value", sentence(rng, 8 + rng() % 30)}});
        turns.push_back({{"from", "gpt"}, {"value", rng() % 2 ? html_answer(rng) : sentence(rng, 60) + "\n\n" + sentence(rng, 40)}});
      }
      rec = {{"id", "c" + std::to_string(n)}, {"conversations", turns}};
    }
    std::string s = rec.dump();
    if (n % 100 == 49) last = s;
    out << (n ? ",\n" : "") << s;
    written += s.size() + 2;
    ++n;
  }
  out << "\n]\n";
}

int main(int argc, char** argv) {
  std::size_t mb = 1024;
  fs::path dir = "/tmp/vhost-bench-prepare", tok_file;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--mb")) mb = std::stoul(argv[i + 1]);
    if (!std::strcmp(argv[i], "--dir")) dir = argv[i + 1];
    if (!std::strcmp(argv[i], "--tokenizer")) tok_file = argv[i + 1];
  }
  fs::create_directories(dir);
  fs::path input = dir / ("sharegpt_" + std::to_string(mb) + "mb.json");
  if (!fs::exists(input)) {
    std::printf("writing %s (%zu MB)...\n", input.c_str(), mb);
    std::fflush(stdout);
    write_synthetic(input.string() + ".tmp", mb);
    fs::rename(input.string() + ".tmp", input);
  }
  if (tok_file.empty()) {
    fs::path shared = fs::path(VHOST_SOURCE_DIR) / ".." / "shared" / "models" / "llama2_tokenizer.model";
    if (fs::exists(shared)) {
      tok_file = shared;
    } else {
      std::ofstream corpus(dir / "corpus.txt");
      for (const char* f : {"README.md", "docs/plugins.md", "docs/pipelines.md", "docs/models.md"})
        corpus << std::ifstream(fs::path(VHOST_SOURCE_DIR) / f).rdbuf() << "\n";
      corpus.close();
      tok_file = vhost::llama::Tokenizer::train(dir / "corpus.txt", 2000, dir / "tok");
    }
  }
  auto tok = vhost::llama::Tokenizer::load(tok_file);
  const double bytes = static_cast<double>(fs::file_size(input));
  std::printf("input: %s, %.1f MB; tokenizer: %s (%d pieces)\n", input.c_str(), bytes / 1e6, tok_file.c_str(), tok.vocab_size());

  // Baseline: one pass of the same streaming JSON parser, nothing else.
  reset_peak_rss();
  auto t0 = Clock::now();
  std::uint64_t records = 0;
  vhost::sharegpt::read_sharegpt(input, [&](vhost::sharegpt::Record&&) { ++records; });
  double parse_s = std::chrono::duration<double>(Clock::now() - t0).count();
  long parse_rss = peak_rss_kb();

  // Full preparation: clean (HTML -> Markdown, rules, dedupe) + split + tokenize + write.
  vhost::sharegpt::TokenizerFns fns;
  fns.bos_id = tok.bos_id();
  fns.eos_id = tok.eos_id();
  fns.vocab_size = tok.vocab_size();
  fns.encode_spans = [&](const std::string& s, std::vector<int32_t>& ids, std::vector<uint32_t>& b, std::vector<uint32_t>& e) {
    auto r = tok.encode_spans(s);
    ids = std::move(r.ids), b = std::move(r.begin), e = std::move(r.end);
  };
  vhost::sharegpt::PrepareOptions o;
  o.input = input;
  o.out_dir = dir / "out";
  o.templ = vhost::conv::Registry().get("vicuna_v1.1");
  o.max_length = 2048;
  o.write_json = false;
  reset_peak_rss();
  t0 = Clock::now();
  auto stats = vhost::sharegpt::prepare(o, fns);
  double full_s = std::chrono::duration<double>(Clock::now() - t0).count();
  long full_rss = peak_rss_kb();

  std::printf("\n%-34s %12s %12s %14s %12s\n", "", "seconds", "MB/s", "conversations/s", "peak RSS MB");
  std::printf("%-34s %12.1f %12.1f %14.0f %12.1f\n", "baseline: parse only", parse_s, bytes / 1e6 / parse_s,
              records / parse_s, parse_rss / 1024.0);
  std::printf("%-34s %12.1f %12.1f %14.0f %12.1f\n", "prepare: clean+split+tokenize+write", full_s,
              bytes / 1e6 / full_s, records / full_s, full_rss / 1024.0);
  std::printf("\nprepare / parse-only time: %.2fx\n", full_s / parse_s);
  std::printf("conversations %llu in, %llu kept, %llu sequences, %llu tokens (%llu trained), %llu split\n",
              (unsigned long long)stats["conversations_in"].get<std::uint64_t>(),
              (unsigned long long)stats["conversations_out"].get<std::uint64_t>(),
              (unsigned long long)stats["sequences"].get<std::uint64_t>(),
              (unsigned long long)stats["tokens"].get<std::uint64_t>(),
              (unsigned long long)stats["trained_tokens"].get<std::uint64_t>(),
              (unsigned long long)stats["changes"].value("split_conversations", 0));
  return 0;
}
