// A model plugin without libtorch, for tests of what the host and the CLI do with a model that is
// not llama: byte-level tokens (a byte b is id b + 3; 1 is BOS, 2 EOS) and a "model" that answers
// every prompt with the prompt's last word, reversed, streamed a byte at a time. Its options are
// only `path` (a folder that must exist) and `greeting` (prepended to every answer): it has none
// of llama's engine options (max_batch, decode_dtype...).
#include <vhost/plugin.hpp>

#include <algorithm>
#include <filesystem>

namespace {

class BytesModel final : public vhost::Model {
 public:
  static std::vector<vhost::Option> options() {
    using vhost::Option;
    return {Option::path("path", "", "a folder; it must exist (nothing in it is read)"),
            Option::string("greeting", "", "text put before every answer")};
  }
  explicit BytesModel(const vhost::Config& cfg) : path_(cfg.get<std::string>("path")), greeting_(cfg.get<std::string>("greeting")) {
    if (!std::filesystem::is_directory(path_))
      throw vhost::Error(VHOST_ERR_INVALID_ARGUMENT, "path: " + path_ + " is not a folder");
  }
  vhost::json describe() const override { return {{"path", path_}, {"tokens", "bytes"}}; }

  std::vector<std::int32_t> encode(std::string_view text, bool bos, bool eos) const override {
    std::vector<std::int32_t> ids;
    if (bos) ids.push_back(1);
    for (unsigned char c : text) ids.push_back(static_cast<std::int32_t>(c) + 3);
    if (eos) ids.push_back(2);
    return ids;
  }
  std::string decode(const std::vector<std::int32_t>& ids) const override {
    std::string s;
    for (auto id : ids)
      if (id >= 3 && id < 259) s += static_cast<char>(id - 3);
    return s;
  }
  vhost::json tokenizer_info() const override { return {{"bos_id", 1}, {"eos_id", 2}, {"vocab_size", 259}}; }
  vhost::json capabilities() const override { return {{"template", "vicuna_v1.1"}, {"context", 4096}}; }

  vhost::json generate(const vhost::json& request, const vhost::TokenSink& on_token) override {
    std::vector<std::string> prompts;
    if (request.contains("prompt_ids"))
      for (const auto& ids : request["prompt_ids"]) prompts.push_back(decode(ids.get<std::vector<std::int32_t>>()));
    else
      prompts = request.value("prompts", std::vector<std::string>{});
    const auto max_tokens = request.value("max_tokens", std::int64_t{16});
    vhost::json choices = vhost::json::array();
    std::int64_t prompt_tokens = 0, completion_tokens = 0;
    for (std::size_t i = 0; i < prompts.size(); ++i) {
      const std::string& p = prompts[i];
      const auto end = p.find_last_not_of(" \n:");  // the last word, before the template's "ASSISTANT:"
      const auto before = end == std::string::npos ? std::string::npos : p.find_last_of(" \n", end);
      std::string word = end == std::string::npos ? "" : p.substr(before == std::string::npos ? 0 : before + 1, end - (before == std::string::npos ? 0 : before + 1) + 1);
      std::reverse(word.begin(), word.end());
      std::string answer = greeting_ + word;
      if (static_cast<std::int64_t>(answer.size()) > max_tokens) answer.resize(static_cast<std::size_t>(max_tokens));
      std::string sent;
      for (char c : answer) {
        sent += c;
        if (on_token && !on_token(i, static_cast<unsigned char>(c) + 3, std::string(1, c))) break;
      }
      choices.push_back({{"index", i}, {"text", sent}, {"tokens", encode(sent, false, false)},
                         {"finish_reason", sent.size() == answer.size() && answer.size() < static_cast<std::size_t>(max_tokens) ? "stop" : "length"}});
      prompt_tokens += static_cast<std::int64_t>(p.size()) + 1;
      completion_tokens += static_cast<std::int64_t>(sent.size());
    }
    return {{"choices", choices}, {"usage", {{"prompt_tokens", prompt_tokens}, {"completion_tokens", completion_tokens}}}};
  }

 private:
  std::string path_, greeting_;
};

}  // namespace

VHOST_PLUGIN(BytesModel, "bytes", "1.0.0", "test model: byte tokens, answers with the prompt's last word reversed")
