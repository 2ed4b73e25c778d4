// Conversation templates: the one source of truth for how a chat becomes a prompt, shared by
// data preparation (which spans are trained), serving (chat prompts, stop strings) and
// evaluation. Header-only, no libtorch; host and plugins include the same code.
//
// The built-in templates reproduce FastChat's conversation.py byte for byte (same fields, same
// separator styles). A rendering is a list of segments, each text or a special token (BOS/EOS
// written by the template's separators, never found in user text), so that tokenization can
// map the template's "</s>" to the EOS id while a user's literal "</s>" stays text.
#pragma once

#include <nlohmann/json.hpp>

#include <algorithm>
#include <array>
#include <cstddef>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace vhost::conv {

using json = nlohmann::json;

// FastChat's SeparatorStyle values that the built-ins and custom templates can use.
enum class Style { AddColonSingle, AddColonTwo, NoColonSingle, Llama2, ChatML };

inline const std::vector<std::pair<std::string, Style>>& style_names() {
  static const std::vector<std::pair<std::string, Style>> n = {{"add_colon_single", Style::AddColonSingle},
                                                                {"add_colon_two", Style::AddColonTwo},
                                                                {"no_colon_single", Style::NoColonSingle},
                                                                {"llama2", Style::Llama2},
                                                                {"chatml", Style::ChatML}};
  return n;
}

struct Template {
  std::string name;
  std::string system_template = "{system_message}";
  std::string system_message;
  std::array<std::string, 2> roles;  // user, assistant
  Style style = Style::AddColonTwo;
  std::string sep = " ", sep2;
  // What follows an assistant message and is trained with it (the end-of-turn marker the model
  // must learn to produce). Empty: the style's default (see assistant_end()).
  std::string assistant_end_override;
  std::vector<std::string> stop;  // extra stop strings for generation

  std::string system_prompt(const std::string& message) const {
    std::string out = system_template;
    auto at = out.find("{system_message}");
    if (at != std::string::npos) out.replace(at, 16, message);
    return out;
  }
  // The trained end of an assistant turn.
  std::string assistant_end() const {
    if (!assistant_end_override.empty()) return assistant_end_override;
    switch (style) {
      case Style::AddColonTwo: return sep2;
      case Style::Llama2: {
        auto p = sep2.find("</s>");
        return p == std::string::npos ? sep2 : sep2.substr(0, p + 4);
      }
      case Style::ChatML: return sep;
      default: return sep;
    }
  }
  // Strings that end a generation (besides the model's EOS).
  std::vector<std::string> stop_strings() const {
    std::vector<std::string> s = stop;
    auto add = [&](std::string x) {
      auto b = x.find_first_not_of(" \n");
      if (b == std::string::npos) return;
      x = x.substr(b);
      auto e = x.find_last_not_of(" \n");
      x = x.substr(0, e + 1);
      if (x == "</s>" || x.empty()) return;  // that one is the EOS token
      if (std::find(s.begin(), s.end(), x) == s.end()) s.push_back(x);
    };
    if (style == Style::AddColonSingle || style == Style::NoColonSingle || style == Style::ChatML) add(sep);
    return s;
  }
};

// A conversation to render: messages alternate user, assistant, user, ... An empty final
// assistant message (or an odd count) renders the open assistant tag for generation.
struct Conversation {
  std::optional<std::string> system;  // overrides the template's system message
  std::vector<std::string> messages;
};

struct Segment {
  enum Kind { Text, Bos, Eos } kind = Text;
  enum Role { System, Tag, User, Assistant } role = Tag;
  std::string text;  // for Bos/Eos: "<s>" / "</s>" (what the text rendering shows)
  bool trained = false;
};

struct Rendered {
  std::vector<Segment> segments;
  std::string text() const {
    std::string t;
    for (const auto& s : segments) t += s.text;
    return t;
  }
};

class TemplateError : public std::runtime_error {
 public:
  TemplateError(std::string field, const std::string& message)
      : std::runtime_error(message), field_(std::move(field)) {}
  const std::string& field() const { return field_; }

 private:
  std::string field_;
};

namespace detail {
// Appends template-written text: "<s>" and "</s>" in it become BOS/EOS segments.
inline void add_template_text(Rendered& r, const std::string& text, Segment::Role role, bool trained) {
  std::size_t i = 0;
  while (i < text.size()) {
    auto b = text.find("<s>", i), e = text.find("</s>", i);
    auto next = std::min(b, e);
    if (next == std::string::npos) {
      r.segments.push_back({Segment::Text, role, text.substr(i), trained});
      return;
    }
    if (next > i) r.segments.push_back({Segment::Text, role, text.substr(i, next - i), trained});
    if (next == e) {
      r.segments.push_back({Segment::Eos, role, "</s>", trained});
      i = e + 4;
    } else {
      r.segments.push_back({Segment::Bos, role, "<s>", false});
      i = b + 3;
    }
  }
}
inline void add_user_text(Rendered& r, const std::string& text, Segment::Role role) {
  if (!text.empty()) r.segments.push_back({Segment::Text, role, text, role == Segment::Assistant});
}
// The separator after message i, split into its trained head (assistant_end) and the rest.
inline void add_sep(Rendered& r, const Template& t, const std::string& sep, bool after_assistant) {
  if (!after_assistant) return add_template_text(r, sep, Segment::Tag, false);
  std::string end = t.assistant_end();
  if (!end.empty() && sep.compare(0, end.size(), end) == 0) {
    add_template_text(r, end, Segment::Tag, true);
    add_template_text(r, sep.substr(end.size()), Segment::Tag, false);
  } else {
    add_template_text(r, sep, Segment::Tag, false);
  }
}
}  // namespace detail

// FastChat's Conversation.get_prompt(), as segments.
inline Rendered render(const Template& t, const Conversation& c) {
  using detail::add_sep;
  using detail::add_template_text;
  using detail::add_user_text;
  Rendered r;
  const std::string sys_msg = c.system ? *c.system : t.system_message;
  const std::string sys = t.system_prompt(sys_msg);
  auto role_of = [](std::size_t i) { return i % 2 == 0 ? Segment::User : Segment::Assistant; };
  std::vector<std::string> msgs = c.messages;
  if (msgs.size() % 2 == 1) msgs.push_back("");  // open assistant turn
  const std::size_t n = msgs.size();
  switch (t.style) {
    case Style::AddColonSingle:
    case Style::AddColonTwo: {
      const bool two = t.style == Style::AddColonTwo;
      add_template_text(r, sys, Segment::System, false);
      add_template_text(r, t.sep, Segment::Tag, false);
      for (std::size_t i = 0; i < n; ++i) {
        const bool last_open = i + 1 == n && msgs[i].empty();
        if (!last_open) {
          add_template_text(r, t.roles[i % 2] + ": ", Segment::Tag, false);
          add_user_text(r, msgs[i], role_of(i));
          add_sep(r, t, two && i % 2 == 1 ? t.sep2 : t.sep, i % 2 == 1);
        } else {
          add_template_text(r, t.roles[i % 2] + ":", Segment::Tag, false);
        }
      }
      break;
    }
    case Style::NoColonSingle: {
      add_template_text(r, sys, Segment::System, false);
      for (std::size_t i = 0; i < n; ++i) {
        add_template_text(r, t.roles[i % 2], Segment::Tag, false);
        if (i + 1 == n && msgs[i].empty()) break;
        add_user_text(r, msgs[i], role_of(i));
        add_sep(r, t, t.sep, i % 2 == 1);
      }
      break;
    }
    case Style::Llama2: {
      if (!sys_msg.empty()) add_template_text(r, sys, Segment::System, false);
      else add_template_text(r, "[INST] ", Segment::Tag, false);
      for (std::size_t i = 0; i < n; ++i) {
        const std::string& tag = t.roles[i % 2];
        if (i + 1 == n && msgs[i].empty()) {
          add_template_text(r, tag, Segment::Tag, false);
          break;
        }
        if (i == 0) {
          add_user_text(r, msgs[i], role_of(i));
          add_template_text(r, " ", Segment::Tag, false);
        } else {
          add_template_text(r, tag + " ", Segment::Tag, false);
          add_user_text(r, msgs[i], role_of(i));
          add_sep(r, t, i % 2 == 0 ? t.sep : t.sep2, i % 2 == 1);
        }
      }
      break;
    }
    case Style::ChatML: {
      if (!sys.empty()) {
        add_template_text(r, sys, Segment::System, false);
        add_template_text(r, t.sep + "\n", Segment::Tag, false);
      }
      for (std::size_t i = 0; i < n; ++i) {
        add_template_text(r, t.roles[i % 2] + "\n", Segment::Tag, false);
        if (i + 1 == n && msgs[i].empty()) break;
        add_user_text(r, msgs[i], role_of(i));
        add_sep(r, t, t.sep + "\n", i % 2 == 1);
      }
      break;
    }
  }
  // Merge neighbouring text segments of the same role and training flag.
  Rendered m;
  for (auto& s : r.segments) {
    if (s.kind == Segment::Text && !m.segments.empty() && m.segments.back().kind == Segment::Text &&
        m.segments.back().role == s.role && m.segments.back().trained == s.trained)
      m.segments.back().text += s.text;
    else if (s.kind != Segment::Text || !s.text.empty())
      m.segments.push_back(std::move(s));
  }
  return m;
}

// ---- the registry ----------------------------------------------------------------------------
inline std::map<std::string, Template> builtin_templates() {
  std::map<std::string, Template> m;
  auto add = [&](Template t) { m[t.name] = std::move(t); };
  {  // FastChat "vicuna_v1.1": Vicuna v1.1 / v1.3 / v1.5.
    Template t;
    t.name = "vicuna_v1.1";
    t.system_message =
        "A chat between a curious user and an artificial intelligence assistant. "
        "The assistant gives helpful, detailed, and polite answers to the user's questions.";
    t.roles = {"USER", "ASSISTANT"};
    t.style = Style::AddColonTwo;
    t.sep = " ";
    t.sep2 = "</s>";
    add(t);
  }
  {  // Vicuna v0 (FastChat 0.1's "###" format, zero-shot: without the one-shot example).
    Template t;
    t.name = "vicuna_v0";
    t.system_message =
        "A chat between a curious human and an artificial intelligence assistant. "
        "The assistant gives helpful, detailed, and polite answers to the human's questions.";
    t.roles = {"Human", "Assistant"};
    t.style = Style::AddColonSingle;
    t.sep = "\n### ";
    t.assistant_end_override = "\n###";
    t.stop = {"###"};
    add(t);
  }
  {  // FastChat "alpaca".
    Template t;
    t.name = "alpaca";
    t.system_message =
        "Below is an instruction that describes a task. Write a response that appropriately completes the request.";
    t.roles = {"### Instruction", "### Response"};
    t.style = Style::AddColonTwo;
    t.sep = "\n\n";
    t.sep2 = "</s>";
    add(t);
  }
  {  // FastChat "llama-2" (Meta's chat format); the registry name the issue uses.
    Template t;
    t.name = "llama-2-chat";
    t.system_template = "[INST] <<SYS>>\n{system_message}\n<</SYS>>\n\n";
    t.roles = {"[INST]", "[/INST]"};
    t.style = Style::Llama2;
    t.sep = " ";
    t.sep2 = " </s><s>";
    add(t);
  }
  {  // FastChat "chatml".
    Template t;
    t.name = "chatml";
    t.system_template = "<|im_start|>system\n{system_message}";
    t.system_message = "You are a helpful assistant.";
    t.roles = {"<|im_start|>user", "<|im_start|>assistant"};
    t.style = Style::ChatML;
    t.sep = "<|im_end|>";
    t.stop = {"<|im_end|>"};
    add(t);
  }
  return m;
}

// A custom template from a JSON/TOML table:
//   {"style": "add_colon_two", "roles": ["USER", "ASSISTANT"], "system_message": "...",
//    "system_template": "{system_message}", "sep": " ", "sep2": "</s>", "assistant_end": "",
//    "stop": [], "base": "vicuna_v1.1"}
// "base" starts from a registered template; every other key overrides it. Errors name the field.
inline Template template_from_json(const std::string& name, const json& j,
                                   const std::map<std::string, Template>& known) {
  if (!j.is_object()) throw TemplateError("", "a template is a table, got " + std::string(j.type_name()));
  Template t;
  t.name = name;
  t.sep2.clear();
  static const std::vector<std::string> keys = {"base", "style", "roles", "system_message", "system_template",
                                                "sep", "sep2", "assistant_end", "stop"};
  for (auto it = j.begin(); it != j.end(); ++it)
    if (std::find(keys.begin(), keys.end(), it.key()) == keys.end())
      throw TemplateError(it.key(), "unknown template field (fields: base, style, roles, system_message, "
                                    "system_template, sep, sep2, assistant_end, stop)");
  auto str = [&](const char* k) -> std::optional<std::string> {
    if (!j.contains(k)) return std::nullopt;
    if (!j[k].is_string()) throw TemplateError(k, "must be a string");
    return j[k].get<std::string>();
  };
  bool has_base = false;
  if (auto b = str("base")) {
    auto it = known.find(*b);
    if (it == known.end()) throw TemplateError("base", "no template named '" + *b + "'");
    t = it->second;
    t.name = name;
    has_base = true;
  }
  if (auto s = str("style")) {
    bool ok = false;
    for (const auto& [n, st] : style_names())
      if (n == *s) t.style = st, ok = true;
    if (!ok) throw TemplateError("style", "unknown style '" + *s + "' (add_colon_single, add_colon_two, "
                                          "no_colon_single, llama2, chatml)");
  } else if (!has_base) {
    throw TemplateError("style", "missing (or give a base template)");
  }
  if (j.contains("roles")) {
    const auto& r = j["roles"];
    if (!r.is_array() || r.size() != 2 || !r[0].is_string() || !r[1].is_string())
      throw TemplateError("roles", "must be two strings: [user, assistant]");
    t.roles = {r[0].get<std::string>(), r[1].get<std::string>()};
  } else if (!has_base) {
    throw TemplateError("roles", "missing (or give a base template)");
  }
  if (auto s = str("system_message")) t.system_message = *s;
  if (auto s = str("system_template")) t.system_template = *s;
  if (auto s = str("sep")) t.sep = *s;
  if (auto s = str("sep2")) t.sep2 = *s;
  if (auto s = str("assistant_end")) t.assistant_end_override = *s;
  if (j.contains("stop")) {
    const auto& s = j["stop"];
    if (!s.is_array() || !std::all_of(s.begin(), s.end(), [](const json& x) { return x.is_string(); }))
      throw TemplateError("stop", "must be a list of strings");
    t.stop = s.get<std::vector<std::string>>();
  }
  if (t.style == Style::AddColonTwo && t.sep2.empty())
    throw TemplateError("sep2", "add_colon_two needs sep2 (what ends an assistant turn, e.g. \"</s>\")");
  return t;
}

// The built-ins plus custom templates ({"name": {...}, ...}); a custom one may replace a built-in.
class Registry {
 public:
  Registry() : t_(builtin_templates()) {}
  explicit Registry(const json& custom) : Registry() { add(custom); }
  void add(const json& custom) {
    if (custom.is_null()) return;
    if (!custom.is_object()) throw TemplateError("", "templates must be a table of tables");
    for (auto it = custom.begin(); it != custom.end(); ++it) {
      try {
        t_[it.key()] = template_from_json(it.key(), it.value(), t_);
      } catch (const TemplateError& e) {
        throw TemplateError(it.key() + (e.field().empty() ? "" : "." + e.field()), e.what());
      }
    }
  }
  const Template& get(const std::string& name) const {
    auto it = t_.find(name);
    if (it == t_.end()) {
      std::string all;
      for (const auto& [n, _] : t_) all += (all.empty() ? "" : ", ") + n;
      throw TemplateError("", "unknown conversation template '" + name + "' (known: " + all + ")");
    }
    return it->second;
  }
  std::vector<std::string> names() const {
    std::vector<std::string> n;
    for (const auto& [k, _] : t_) n.push_back(k);
    return n;
  }

 private:
  std::map<std::string, Template> t_;
};

// The whole definition of `t` (no "base"): what a model reports and a checkpoint keeps, so that
// a custom template travels with the model. template_from_json(t.name, template_to_json(t), {})
// gives `t` back.
inline json template_to_json(const Template& t) {
  std::string style;
  for (const auto& [n, st] : style_names())
    if (st == t.style) style = n;
  json j = {{"style", style},
            {"roles", {t.roles[0], t.roles[1]}},
            {"system_message", t.system_message},
            {"system_template", t.system_template},
            {"sep", t.sep},
            {"sep2", t.sep2},
            {"stop", t.stop}};
  if (!t.assistant_end_override.empty()) j["assistant_end"] = t.assistant_end_override;
  return j;
}

// The template a model reports in its capabilities (before ABI 1.7, its tokenizer_info): {"template": NAME,
// "template_definition": {...}} (template_to_json; may be absent for a built-in), and optionally
// {"templates": {NAME: definition, ...}}, the other custom templates it was given. `name`, when
// not empty, asks for another template instead: a built-in or one of those, by name.
// Every component that renders chats (serve, chat, eval, prepare) resolves templates here, so a
// custom template that was trained on is also served. Throws TemplateError.
inline Template model_template(const json& info, const std::string& name = "") {
  const std::string own = info.is_object() && info.contains("template") && info["template"].is_string()
                              ? info["template"].get<std::string>()
                              : std::string("vicuna_v1.1");
  Registry reg;
  if (info.is_object() && info.contains("templates") && info["templates"].is_object()) {
    try {
      reg.add(info["templates"]);
    } catch (const TemplateError& e) {
      throw TemplateError(e.field(), "the model's templates: " + std::string(e.what()));
    }
  }
  if (info.is_object() && info.contains("template_definition") && info["template_definition"].is_object()) {
    try {
      reg.add(json{{own, info["template_definition"]}});
    } catch (const TemplateError& e) {
      throw TemplateError(e.field(), "the model's template: " + std::string(e.what()));
    }
  }
  return reg.get(name.empty() ? own : name);
}

// OpenAI chat messages ([{"role": "system"|"developer"|"user"|"assistant", "content": text or
// [{"type": "text", "text": ...}]}, ...]) as a Conversation: an optional system message first,
// then user and assistant alternating from the user, the last one the user's (the one to
// answer). Errors name the message ("messages[2]") as the field.
inline Conversation conversation_from_messages(const json& messages) {
  if (!messages.is_array() || messages.empty()) throw TemplateError("messages", "'messages' must be a non-empty array");
  Conversation conversation;
  std::size_t i = 0;
  for (const auto& m : messages) {
    const std::string where = "messages[" + std::to_string(i++) + "]";
    if (!m.is_object() || !m.contains("role") || !m["role"].is_string()) throw TemplateError(where, "needs a 'role'");
    const std::string role = m["role"].get<std::string>();
    std::string content;
    if (m.contains("content") && m["content"].is_string()) {
      content = m["content"].get<std::string>();
    } else if (m.contains("content") && m["content"].is_array()) {
      for (const auto& part : m["content"])
        if (part.is_object() && part.value("type", "") == "text" && part.contains("text") && part["text"].is_string())
          content += part["text"].get<std::string>();
    } else {
      throw TemplateError(where, "'content' must be a string");
    }
    const bool user_turn = conversation.messages.size() % 2 == 0;
    if (role == "system" || role == "developer") {
      if (!conversation.messages.empty()) throw TemplateError(where, "a system message must come first");
      conversation.system = content;
    } else if (role == "user" || role == "assistant") {
      if ((role == "user") != user_turn)
        throw TemplateError(where, "user and assistant messages must alternate, starting with the user");
      conversation.messages.push_back(content);
    } else {
      throw TemplateError(where, "role '" + role + "' is not one of system, user, assistant");
    }
  }
  if (conversation.messages.size() % 2 == 0) throw TemplateError("messages", "the last message must be the user's");
  return conversation;
}

// ---- ShareGPT roles ---------------------------------------------------------------------------
enum class Speaker { User, Assistant, System, Unknown };
// "human"/"user" -> User; "gpt"/"assistant"/"chatgpt"/"bard"/"bing" -> Assistant; "system".
inline Speaker speaker_of(const std::string& from) {
  if (from == "human" || from == "user") return Speaker::User;
  if (from == "gpt" || from == "assistant" || from == "chatgpt" || from == "bard" || from == "bing")
    return Speaker::Assistant;
  if (from == "system") return Speaker::System;
  return Speaker::Unknown;
}

// One ShareGPT record ({"conversations": [{"from", "value"}...]}) as a Conversation, strictly:
// an optional leading system turn, then user/assistant alternating from the user. Errors name
// the offending field ("conversations[3].from").
inline Conversation conversation_from_sharegpt(const json& record) {
  if (!record.is_object()) throw TemplateError("", "a conversation is a JSON object, got " + std::string(record.type_name()));
  const json* turns = nullptr;
  if (record.contains("conversations")) turns = &record["conversations"];
  else if (record.contains("messages")) turns = &record["messages"];
  if (!turns) throw TemplateError("conversations", "missing");
  if (!turns->is_array()) throw TemplateError("conversations", "must be a list");
  Conversation c;
  std::size_t expect = 0;
  for (std::size_t i = 0; i < turns->size(); ++i) {
    const json& t = (*turns)[i];
    std::string where = "conversations[" + std::to_string(i) + "]";
    if (!t.is_object()) throw TemplateError(where, "must be an object with \"from\" and \"value\"");
    const char* role_key = t.contains("from") ? "from" : "role";
    const char* text_key = t.contains("value") ? "value" : "content";
    if (!t.contains(role_key) || !t[role_key].is_string()) throw TemplateError(where + ".from", "missing or not a string");
    if (!t.contains(text_key) || !t[text_key].is_string()) throw TemplateError(where + ".value", "missing or not a string");
    auto sp = speaker_of(t[role_key].get<std::string>());
    if (sp == Speaker::Unknown)
      throw TemplateError(where + ".from", "unknown role '" + t[role_key].get<std::string>() + "' (human, gpt, system)");
    if (sp == Speaker::System) {
      if (i != 0) throw TemplateError(where + ".from", "a system turn may only come first");
      c.system = t[text_key].get<std::string>();
      continue;
    }
    const bool user = sp == Speaker::User;
    if (user != (expect % 2 == 0))
      throw TemplateError(where + ".from", std::string("expected a ") + (expect % 2 == 0 ? "human" : "gpt") +
                                               " turn: roles must alternate, starting with human");
    c.messages.push_back(t[text_key].get<std::string>());
    ++expect;
  }
  return c;
}

}  // namespace vhost::conv
