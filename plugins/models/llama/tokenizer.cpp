#include "tokenizer.hpp"

#include "spm_shim.h"

#include <vhost/plugin.hpp>

#include <dlfcn.h>
#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>

#include <cerrno>
#include <cstring>

#include <cstdlib>
#include <fstream>
#include <mutex>
#include <sstream>

extern char** environ;

namespace vhost::llama {

namespace fs = std::filesystem;

namespace {

// The shim's entry points, resolved once per process.
struct Shim {
  decltype(&vspm_load) load;
  decltype(&vspm_free) free;
  decltype(&vspm_info) info;
  decltype(&vspm_encode) encode;
  decltype(&vspm_decode) decode;
  decltype(&vspm_encode_spans) encode_spans;
  decltype(&vspm_free_string) free_string;
};

// Where this code lives (the plugin, or a test executable): helpers are found relative to it.
fs::path own_file() {
  Dl_info info{};
  if (dladdr(reinterpret_cast<void*>(&own_file), &info) && info.dli_fname) return fs::path(info.dli_fname);
  return {};
}

// A helper file next to the installed or built vhost: lib/vhost/NAME.
std::vector<fs::path> helper_candidates(const std::string& name, const char* build_path, const char* install_path) {
  std::vector<fs::path> out;
  fs::path self = own_file();
  if (!self.empty()) {
    fs::path dir = fs::absolute(self).parent_path();
    out.push_back(dir.parent_path() / name);                   // from lib/vhost/plugins/
    out.push_back(dir.parent_path() / "lib" / "vhost" / name);  // from bin/
  }
  out.emplace_back(build_path);
  out.emplace_back(install_path);
  return out;
}

const Shim& shim() {
  static Shim s{};
  static std::string error;
  static std::once_flag once;
  std::call_once(once, [] {
    auto candidates = helper_candidates("libvhost_spm.so", VHOST_SPM_BUILD_PATH, VHOST_SPM_INSTALL_PATH);
    if (const char* env = std::getenv("VHOST_SPM_LIBRARY")) candidates.insert(candidates.begin(), env);
    // Its own symbol scope (see spm_shim.h). Deep binding only when a protobuf is already in the
    // global scope (a program linked against libtorch): it would otherwise win every lookup.
    // Without need, no deep binding: it breaks objects the executable copy-relocates (std::cerr).
    int flags = RTLD_NOW | RTLD_LOCAL;
    if (dlsym(RTLD_DEFAULT, "_ZN6google8protobuf8internal13VerifyVersionEiiPKc")) flags |= RTLD_DEEPBIND;
    void* h = nullptr;
    std::string tried;
    for (const auto& c : candidates) {
      std::error_code ec;
      if (!fs::exists(c, ec)) {
        tried += "\n  " + c.string() + " (absent)";
        continue;
      }
      // Its own symbol scope, searched before the global one: see spm_shim.h.
      h = dlopen(c.c_str(), flags);
      if (h) break;
      tried += "\n  " + c.string() + ": " + dlerror();
    }
    if (!h) {
      error = "cannot load the SentencePiece shim libvhost_spm.so; tried:" + tried;
      return;
    }
    auto sym = [&](const char* name) {
      void* p = dlsym(h, name);
      if (!p) error = std::string("libvhost_spm.so lacks ") + name;
      return p;
    };
    s.load = reinterpret_cast<decltype(s.load)>(sym("vspm_load"));
    s.free = reinterpret_cast<decltype(s.free)>(sym("vspm_free"));
    s.info = reinterpret_cast<decltype(s.info)>(sym("vspm_info"));
    s.encode = reinterpret_cast<decltype(s.encode)>(sym("vspm_encode"));
    s.decode = reinterpret_cast<decltype(s.decode)>(sym("vspm_decode"));
    s.encode_spans = reinterpret_cast<decltype(s.encode_spans)>(sym("vspm_encode_spans"));
    s.free_string = reinterpret_cast<decltype(s.free_string)>(sym("vspm_free_string"));
  });
  if (!error.empty()) throw vhost::Error(VHOST_ERR_RUNTIME, error);
  return s;
}

std::string take_error(char* err) {
  std::string msg = err ? err : "unknown error";
  if (err) shim().free_string(err);
  return msg;
}

}  // namespace

Tokenizer Tokenizer::load(const fs::path& model_file) {
  std::ifstream in(model_file, std::ios::binary);
  if (!in) throw vhost::Error(VHOST_ERR_IO, model_file.string() + ": cannot open tokenizer model");
  std::stringstream ss;
  ss << in.rdbuf();
  Tokenizer t = from_serialized(ss.str(), model_file.string());
  t.path_ = model_file;
  return t;
}

Tokenizer Tokenizer::from_serialized(const std::string& proto, const std::string& source) {
  const Shim& s = shim();
  char* err = nullptr;
  vspm* p = s.load(proto.data(), proto.size(), &err);
  if (!p) throw vhost::Error(VHOST_ERR_INVALID_ARGUMENT, source + ": not a SentencePiece model: " + take_error(err));
  Tokenizer t;
  t.sp_ = std::shared_ptr<vspm>(p, [](vspm* x) { shim().free(x); });
  t.vocab_ = s.info(p, VSPM_VOCAB);
  t.bos_ = s.info(p, VSPM_BOS);
  t.eos_ = s.info(p, VSPM_EOS);
  t.unk_ = s.info(p, VSPM_UNK);
  if (t.vocab_ <= 0) throw vhost::Error(VHOST_ERR_INVALID_ARGUMENT, source + ": empty vocabulary");
  return t;
}

std::vector<int32_t> Tokenizer::encode(const std::string& text, bool add_bos, bool add_eos) const {
  std::vector<int32_t> out;
  if (add_bos && bos_ >= 0) out.push_back(bos_);
  char* err = nullptr;
  auto collect = [](void* ctx, const int32_t* ids, size_t n) {
    auto* v = static_cast<std::vector<int32_t>*>(ctx);
    v->insert(v->end(), ids, ids + n);
  };
  if (shim().encode(sp_.get(), text.data(), text.size(), collect, nullptr, &out, &err) != 0)
    throw vhost::Error(VHOST_ERR_INVALID_ARGUMENT, "cannot tokenize: " + take_error(err));
  if (add_eos && eos_ >= 0) out.push_back(eos_);
  return out;
}

Tokenizer::Spans Tokenizer::encode_spans(const std::string& text) const {
  Spans out;
  char* err = nullptr;
  auto collect = [](void* ctx, const int32_t* ids, const uint32_t* b, const uint32_t* e, size_t n) {
    auto* s = static_cast<Spans*>(ctx);
    s->ids.assign(ids, ids + n);
    s->begin.assign(b, b + n);
    s->end.assign(e, e + n);
  };
  if (shim().encode_spans(sp_.get(), text.data(), text.size(), collect, &out, &err) != 0)
    throw vhost::Error(VHOST_ERR_INVALID_ARGUMENT, "cannot tokenize: " + take_error(err));
  return out;
}

std::vector<std::string> Tokenizer::pieces(const std::string& text) const {
  std::vector<std::string> out;
  char* err = nullptr;
  auto collect = [](void* ctx, const char* s, size_t n) { static_cast<std::vector<std::string>*>(ctx)->emplace_back(s, n); };
  if (shim().encode(sp_.get(), text.data(), text.size(), nullptr, collect, &out, &err) != 0)
    throw vhost::Error(VHOST_ERR_INVALID_ARGUMENT, "cannot tokenize: " + take_error(err));
  return out;
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids) const {
  for (int32_t id : ids)
    if (id < 0 || id >= vocab_)
      throw vhost::Error(VHOST_ERR_INVALID_ARGUMENT, "token id " + std::to_string(id) +
                                                         " is outside the vocabulary (0.." + std::to_string(vocab_ - 1) + ")");
  std::string text;
  char* err = nullptr;
  auto collect = [](void* ctx, const char* s, size_t n) { static_cast<std::string*>(ctx)->append(s, n); };
  if (shim().decode(sp_.get(), ids.data(), ids.size(), collect, &text, &err) != 0)
    throw vhost::Error(VHOST_ERR_INVALID_ARGUMENT, "cannot decode: " + take_error(err));
  return text;
}

namespace {
const std::string kReplacement = "\xEF\xBF\xBD";  // what SentencePiece shows for an incomplete character
bool ends_incomplete(const std::string& s) {
  return s.size() >= 3 && s.compare(s.size() - 3, 3, kReplacement) == 0;
}
}  // namespace

std::vector<int32_t> Tokenizer::continuation_context(const std::vector<int32_t>& prompt) const {
  // A few ids are enough: the dummy-prefix rule looks at the first piece only. Byte-fallback
  // pieces of a character cut at the end are dropped, so that the context's text is a prefix
  // of the text with the continuation.
  constexpr std::size_t kTail = 4;
  std::size_t from = prompt.size() > kTail ? prompt.size() - kTail : 0;
  std::vector<int32_t> ctx(prompt.begin() + static_cast<std::ptrdiff_t>(from), prompt.end());
  for (auto& id : ctx)
    if (id < 0 || id >= vocab_) return {};
  while (!ctx.empty() && ends_incomplete(decode(ctx))) ctx.pop_back();
  return ctx;
}

std::string Tokenizer::decode_after(const std::vector<int32_t>& context, const std::vector<int32_t>& ids) const {
  if (context.empty()) return decode(ids);
  std::vector<int32_t> all(context);
  all.insert(all.end(), ids.begin(), ids.end());
  std::string before = decode(context), text = decode(all);
  if (text.compare(0, before.size(), before) == 0) return text.substr(before.size());
  return decode(ids);
}

int32_t Tokenizer::bos_id() const { return bos_; }
int32_t Tokenizer::eos_id() const { return eos_; }
int32_t Tokenizer::unk_id() const { return unk_; }
int32_t Tokenizer::vocab_size() const { return vocab_; }

fs::path Tokenizer::train(const fs::path& input, int vocab_size, const fs::path& out_dir) {
  if (!fs::is_regular_file(input)) throw vhost::Error(VHOST_ERR_IO, input.string() + ": no such text file");
  if (vocab_size < 259 + 8)
    throw vhost::Error(VHOST_ERR_INVALID_ARGUMENT,
                       "vocab " + std::to_string(vocab_size) + " is too small: byte fallback alone takes 259 ids");
  fs::create_directories(out_dir);
  std::string prefix = (out_dir / "tokenizer").string();
  std::ostringstream args;
  args << "--input=" << input.string() << " --model_prefix=" << prefix << " --vocab_size=" << vocab_size
       << " --model_type=bpe --byte_fallback=true --split_digits=true --allow_whitespace_only_pieces=true"
       << " --remove_extra_whitespaces=false --normalization_rule_name=identity --add_dummy_prefix=true"
       << " --character_coverage=0.9995 --unk_id=0 --bos_id=1 --eos_id=2 --pad_id=-1"
       << " --max_sentence_length=16384 --num_threads=2 --minloglevel=2 --hard_vocab_limit=false";
  // In a child process: the trainer logs through std::cerr and runs its own threads, and needs
  // none of this process's state.
  fs::path exe;
  for (const auto& c : helper_candidates("vhost_spm_train", VHOST_SPM_TRAIN_BUILD_PATH, VHOST_SPM_TRAIN_INSTALL_PATH))
    if (fs::exists(c)) {
      exe = c;
      break;
    }
  if (exe.empty()) throw vhost::Error(VHOST_ERR_RUNTIME, "cannot find the vhost_spm_train helper next to vhost");
  fs::path log = out_dir / "tokenizer-train.log";
  std::string a = args.str();
  pid_t pid = 0;
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 1, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_adddup2(&fa, 1, 2);
  std::string exe_s = exe.string();
  char* argv[] = {exe_s.data(), a.data(), nullptr};
  int rc = posix_spawn(&pid, exe_s.c_str(), &fa, nullptr, argv, environ);
  posix_spawn_file_actions_destroy(&fa);
  if (rc != 0) throw vhost::Error(VHOST_ERR_RUNTIME, "cannot start " + exe_s + ": " + std::strerror(rc));
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    std::ifstream l(log);
    std::string text((std::istreambuf_iterator<char>(l)), {}), last;
    std::istringstream lines(text);
    for (std::string line; std::getline(lines, line);)
      if (!line.empty()) last = line;
    throw vhost::Error(VHOST_ERR_RUNTIME, "tokenizer training on " + input.string() + " failed: " + last +
                                              " (log: " + log.string() + ")");
  }
  fs::remove(log);
  fs::remove(prefix + ".vocab");
  return prefix + ".model";
}

Tokenizer::StreamDecoder::StreamDecoder(const Tokenizer& tok, const std::vector<int32_t>& context)
    : tok_(&tok), ids_(context), prefix_(0), read_(context.size()) {}

std::pair<std::string, std::string> Tokenizer::StreamDecoder::window() const {
  auto from = ids_.begin() + static_cast<std::ptrdiff_t>(prefix_);
  return {tok_->decode(std::vector<int32_t>(from, ids_.begin() + static_cast<std::ptrdiff_t>(read_))),
          tok_->decode(std::vector<int32_t>(from, ids_.end()))};
}

std::string Tokenizer::StreamDecoder::push(int32_t id) {
  // The approach of HF text-generation-inference: decode a short window twice, with and
  // without the new ids, and emit the difference once it no longer ends in an incomplete
  // character (which SentencePiece's byte fallback shows as U+FFFD).
  ids_.push_back(id);
  auto [prev, now] = window();
  if (now.size() > prev.size() && !ends_incomplete(now)) {
    prefix_ = read_;
    read_ = ids_.size();
    return now.substr(prev.size());
  }
  return {};
}

std::string Tokenizer::StreamDecoder::flush() {
  auto [prev, now] = window();
  prefix_ = read_ = ids_.size();
  return now.size() > prev.size() ? now.substr(prev.size()) : std::string();
}

}  // namespace vhost::llama
