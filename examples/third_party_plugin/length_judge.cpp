// A third-party judge: grades two answers by a crude, deterministic rule (longer, up to a cap,
// scores higher) and answers in the Vicuna pairwise format: "s1 s2" on the first line, then
// the reason. Useful as an offline baseline judge; mostly, an example of the plugin SDK.
#include <vhost/plugin.hpp>

#include <algorithm>
#include <regex>

namespace {

class LengthJudge final : public vhost::Judge {
 public:
  static std::vector<vhost::Option> options() {
    using vhost::Option;
    return {Option::integer("cap", 400, "answers longer than this many characters score no higher").range(1, 1000000)};
  }
  explicit LengthJudge(const vhost::Config& cfg) : cap_(cfg.get<std::int64_t>("cap")) {}

  vhost::json describe() const override { return {{"rule", "length"}, {"cap", cap_}}; }

  vhost::json complete(const vhost::json& request) override {
    const auto& messages = request.at("messages");
    if (!messages.is_array() || messages.empty())
      throw vhost::Error(VHOST_ERR_INVALID_ARGUMENT, "request has no messages");
    std::string prompt = messages.back().at("content").get<std::string>();
    // Answers are marked as in Vicuna's review prompt: [The Start of Assistant 1's Answer] ...
    auto answer = [&](int n) -> std::string {
      std::string open = "[The Start of Assistant " + std::to_string(n) + "'s Answer]";
      std::string close = "[The End of Assistant " + std::to_string(n) + "'s Answer]";
      auto a = prompt.find(open), b = prompt.find(close);
      if (a == std::string::npos || b == std::string::npos || b < a) return {};
      return prompt.substr(a + open.size(), b - a - open.size());
    };
    std::string a1 = answer(1), a2 = answer(2);
    std::string text;
    if (a1.empty() && a2.empty()) {
      text = "ready";
    } else {
      auto score = [&](const std::string& s) {
        return 1 + static_cast<int>(9 * std::min<std::int64_t>(static_cast<std::int64_t>(s.size()), cap_) / cap_);
      };
      text = std::to_string(score(a1)) + " " + std::to_string(score(a2)) +
             "\nScores follow answer length (capped at " + std::to_string(cap_) + " characters).";
    }
    return {{"text", text}, {"model", "length"}, {"usage", {{"prompt_tokens", 0}, {"completion_tokens", 0}}},
            {"cost_usd", 0.0}};
  }

 private:
  std::int64_t cap_;
};

}  // namespace

VHOST_PLUGIN(LengthJudge, "length", "1.0.0", "third-party example: scores answers by length")
