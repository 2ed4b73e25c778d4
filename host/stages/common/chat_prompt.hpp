// Internal: the one way the stages that talk to a model in turns (chat, serve's
// /v1/chat/completions, eval's answers) make its prompt: the model's template — its own, a custom
// one it was given, or one named (built-in or custom) — resolved by conv::model_template from
// what the model reports; the conversation rendered; the template's stop strings beside the
// request's; and, where asked, the oldest pairs dropped until the prompt and the reply fit the
// model's context.
#pragma once

#include <vhost/conversation.hpp>

#include <nlohmann/json.hpp>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace vhost::host {

class ChatPrompter {
 public:
  // `info`: the model's capabilities (its template, context); `name`: a template to use instead of the model's own
  // ("" for its own). Throws conv::TemplateError naming what is wrong.
  explicit ChatPrompter(const nlohmann::json& info, const std::string& name = "")
      : t_(conv::model_template(info, name)), context_(info.value("context", int64_t{2048})) {}

  const conv::Template& templ() const { return t_; }

  // The prompt text of `c`, the assistant's turn opened.
  std::string text(const conv::Conversation& c) const { return conv::render(t_, c).text(); }

  // `stop` and the template's stop strings.
  std::vector<std::string> stops(std::vector<std::string> stop = {}) const {
    for (const auto& s : t_.stop_strings()) stop.push_back(s);
    return stop;
  }

  // The prompt of `c` after dropping its oldest pairs (from `c` itself) until `count(prompt)`
  // tokens plus `max_tokens` fit the context, keeping at least the last message.
  std::string fitted(conv::Conversation& c, int64_t max_tokens, const std::function<int64_t(const std::string&)>& count) const {
    std::string prompt = text(c);
    while (c.messages.size() > 1 && count(prompt) + max_tokens > context_) {
      c.messages.erase(c.messages.begin(), c.messages.begin() + 2);
      prompt = text(c);
    }
    return prompt;
  }

 private:
  conv::Template t_;
  int64_t context_;
};

}  // namespace vhost::host
