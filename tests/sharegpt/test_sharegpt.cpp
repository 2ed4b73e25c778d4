// Conversation templates, the streaming ShareGPT reader, HTML -> Markdown, cleaning, splitting
// and assistant-only labels, with a byte tokenizer (every byte one token) so that spans and
// labels can be checked exactly without a model. The real SentencePiece boundary test lives in
// tests/llama (it needs the tokenizer library).
#define CATCH_CONFIG_MAIN
#include "fastchat_rules.hpp"
#include "html.hpp"
#include "prepare.hpp"
#include "reader.hpp"

#include <vhost/conversation.hpp>
#include <vhost/token_dataset.hpp>

#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>
#include <sstream>

namespace fs = std::filesystem;
using namespace vhost;
using Catch::Matchers::Contains;
using json = nlohmann::json;

static fs::path scratch(const std::string& name) {
  fs::path p = fs::path(VHOST_TEST_TMP_DIR) / ("sharegpt-" + name);
  fs::remove_all(p);
  fs::create_directories(p);
  return p;
}
static fs::path write(const fs::path& p, const std::string& text) {
  std::ofstream(p, std::ios::binary) << text;
  return p;
}
static std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Every byte is a token (id = byte + 3), spanning exactly itself; BOS 1, EOS 2.
static sharegpt::TokenizerFns byte_tokenizer() {
  sharegpt::TokenizerFns t;
  t.bos_id = 1;
  t.eos_id = 2;
  t.vocab_size = 259;
  t.encode_spans = [](const std::string& s, std::vector<int32_t>& ids, std::vector<uint32_t>& b, std::vector<uint32_t>& e) {
    ids.clear(), b.clear(), e.clear();
    for (std::size_t i = 0; i < s.size(); ++i) {
      ids.push_back(static_cast<unsigned char>(s[i]) + 3);
      b.push_back(static_cast<uint32_t>(i));
      e.push_back(static_cast<uint32_t>(i + 1));
    }
  };
  return t;
}

// "FIELD: message" of the TemplateError `f` throws, or "no error".
template <class F>
static std::string template_error(F f) {
  try {
    f();
  } catch (const conv::TemplateError& e) {
    return e.field() + ": " + e.what();
  }
  return "no error";
}

static conv::Conversation three_turns() { return conv::Conversation{std::nullopt, {"Hi", "Hello!", "Bye"}}; }

TEST_CASE("templates render FastChat's formats byte for byte", "[template]") {
  conv::Registry reg;
  const std::string vsys =
      "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, detailed, "
      "and polite answers to the user's questions.";
  CHECK(conv::render(reg.get("vicuna_v1.1"), three_turns()).text() ==
        vsys + " USER: Hi ASSISTANT: Hello!</s>USER: Bye ASSISTANT:");
  CHECK(conv::render(reg.get("vicuna_v1.1"), {std::nullopt, {"Hi", "Hello!"}}).text() ==
        vsys + " USER: Hi ASSISTANT: Hello!</s>");
  CHECK(conv::render(reg.get("llama-2-chat"), three_turns()).text() == "[INST] Hi [/INST] Hello! </s><s>[INST] Bye [/INST]");
  CHECK(conv::render(reg.get("llama-2-chat"), {std::string("Be brief."), {"Hi"}}).text() ==
        "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST]");
  CHECK(conv::render(reg.get("alpaca"), three_turns()).text() ==
        "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
        "### Instruction: Hi\n\n### Response: Hello!</s>### Instruction: Bye\n\n### Response:");
  CHECK(conv::render(reg.get("chatml"), three_turns()).text() ==
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n");
  CHECK(conv::render(reg.get("vicuna_v0"), {std::nullopt, {"Hi"}}).text() ==
        "A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, detailed, "
        "and polite answers to the human's questions.\n### Human: Hi\n### Assistant:");
  CHECK(reg.get("vicuna_v0").stop_strings() == std::vector<std::string>{"###"});
  CHECK(reg.get("vicuna_v1.1").stop_strings().empty());
}

TEST_CASE("the template's </s> is EOS, a user's </s> stays text, only assistant spans are trained", "[template]") {
  conv::Registry reg;
  auto r = conv::render(reg.get("vicuna_v1.1"), {std::nullopt, {"say </s> please", "ok </s>", "again"}});
  int eos = 0;
  std::string trained;
  for (const auto& s : r.segments) {
    if (s.kind == conv::Segment::Eos) ++eos;
    if (s.trained) trained += s.text;
    if (s.role == conv::Segment::User) CHECK_FALSE(s.trained);
  }
  CHECK(eos == 1);  // the one after the assistant's reply, not the ones users typed
  CHECK(trained == "ok </s></s>");
}

TEST_CASE("custom templates from tables, and their errors name the field", "[template][malformed]") {
  conv::Registry reg(json{{"terse", {{"base", "vicuna_v1.1"}, {"system_message", "Be terse."}}},
                          {"mine", {{"style", "add_colon_two"}, {"roles", {"Q", "A"}}, {"sep", "\n"}, {"sep2", "</s>\n"}}}});
  CHECK(conv::render(reg.get("terse"), {std::nullopt, {"Hi"}}).text() == "Be terse. USER: Hi ASSISTANT:");
  CHECK(conv::render(reg.get("mine"), {std::nullopt, {"1+1?", "2", "2+2?"}}).text() == "\nQ: 1+1?\nA: 2</s>\nQ: 2+2?\nA:");
  auto field_of = [](const json& j) { return template_error([&] { conv::Registry r(j); }); };
  CHECK_THAT(field_of({{"x", {{"style", "fancy"}, {"roles", {"a", "b"}}}}}), Contains("x.style: unknown style 'fancy'"));
  CHECK_THAT(field_of({{"x", {{"style", "chatml"}}}}), Contains("x.roles: missing"));
  CHECK_THAT(field_of({{"x", {{"base", "nope"}}}}), Contains("x.base: no template named 'nope'"));
  CHECK_THAT(field_of({{"x", {{"base", "chatml"}, {"sepp", "x"}}}}), Contains("x.sepp: unknown template field"));
  CHECK_THAT(field_of({{"x", {{"base", "chatml"}, {"roles", {"only one"}}}}}), Contains("x.roles: must be two strings"));
  CHECK_THAT(field_of({{"x", 3}}), Contains("x: a template is a table"));
  CHECK_THROWS_WITH(reg.get("vicuna"), Contains("unknown conversation template 'vicuna' (known: alpaca"));
}

TEST_CASE("a template's whole definition round-trips, and a model's reported template resolves", "[template]") {
  conv::Registry reg(json{{"mine", {{"style", "add_colon_two"}, {"roles", {"Q", "A"}}, {"sep", "\n"}, {"sep2", "</s>\n"},
                                    {"assistant_end", "<end>"}, {"stop", {"Q:"}}}}});
  const conv::Conversation c{std::string("sys"), {"1+1?", "2", "2+2?"}};
  for (const auto& name : reg.names()) {
    const conv::Template& t = reg.get(name);
    const conv::Template back = conv::template_from_json(name, conv::template_to_json(t), {});
    CHECK(conv::render(back, c).text() == conv::render(t, c).text());
    CHECK(conv::render(back, three_turns()).text() == conv::render(t, three_turns()).text());
    CHECK(back.stop_strings() == t.stop_strings());
    CHECK(back.assistant_end() == t.assistant_end());
  }
  // What a model reports: a custom template by name with its definition; another name is a built-in.
  const json info = {{"template", "mine"}, {"template_definition", conv::template_to_json(reg.get("mine"))}};
  CHECK(conv::render(conv::model_template(info), three_turns()).text() == conv::render(reg.get("mine"), three_turns()).text());
  CHECK(conv::model_template(info, "chatml").name == "chatml");
  const json more = {{"template", "vicuna_v1.1"}, {"templates", {{"mine", conv::template_to_json(reg.get("mine"))}}}};
  CHECK(conv::model_template(more).name == "vicuna_v1.1");
  CHECK(conv::render(conv::model_template(more, "mine"), three_turns()).text() == conv::render(reg.get("mine"), three_turns()).text());
  CHECK(conv::model_template(json{{"template", "alpaca"}}).name == "alpaca");
  CHECK(conv::model_template(json::object()).name == "vicuna_v1.1");
  CHECK_THROWS_WITH(conv::model_template(json{{"template", "gone"}}), Contains("unknown conversation template 'gone'"));
  CHECK_THROWS_WITH(conv::model_template(json{{"template", "x"}, {"template_definition", {{"style", "odd"}}}}),
                    Contains("the model's template: unknown style 'odd'"));
}

TEST_CASE("OpenAI chat messages become a conversation, strictly", "[template][malformed]") {
  auto c = conv::conversation_from_messages(json::parse(
      R"([{"role": "developer", "content": "S"}, {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image_url"}]},
          {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}])"));
  CHECK(*c.system == "S");
  CHECK(c.messages == std::vector<std::string>{"a", "b", "c"});
  auto err = [](const char* text) { return template_error([&] { conv::conversation_from_messages(json::parse(text)); }); };
  CHECK_THAT(err(R"([])"), Contains("messages: 'messages' must be a non-empty array"));
  CHECK_THAT(err(R"({"role": "user"})"), Contains("must be a non-empty array"));
  CHECK_THAT(err(R"([{"content": "x"}])"), Contains("messages[0]: needs a 'role'"));
  CHECK_THAT(err(R"([{"role": "user", "content": 5}])"), Contains("messages[0]: 'content' must be a string"));
  CHECK_THAT(err(R"([{"role": "user", "content": "a"}, {"role": "system", "content": "s"}])"),
             Contains("messages[1]: a system message must come first"));
  CHECK_THAT(err(R"([{"role": "assistant", "content": "a"}])"), Contains("messages[0]: user and assistant messages must alternate"));
  CHECK_THAT(err(R"([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}])"),
             Contains("messages: the last message must be the user's"));
  CHECK_THAT(err(R"([{"role": "tool", "content": "a"}])"), Contains("messages[0]: role 'tool' is not one of"));
}

TEST_CASE("a ShareGPT record becomes a conversation, strictly", "[template][malformed]") {
  auto c = conv::conversation_from_sharegpt(json::parse(
      R"({"conversations": [{"from": "system", "value": "S"}, {"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}]})"));
  CHECK(*c.system == "S");
  CHECK(c.messages == std::vector<std::string>{"a", "b"});
  auto err = [](const char* text) { return template_error([&] { conv::conversation_from_sharegpt(json::parse(text)); }); };
  CHECK_THAT(err(R"({"id": 1})"), Contains("conversations: missing"));
  CHECK_THAT(err(R"({"conversations": [{"from": "gpt", "value": "x"}]})"), Contains("conversations[0].from: expected a human turn"));
  CHECK_THAT(err(R"({"conversations": [{"from": "robot", "value": "x"}]})"), Contains("conversations[0].from: unknown role 'robot'"));
  CHECK_THAT(err(R"({"conversations": [{"from": "human", "value": 5}]})"), Contains("conversations[0].value: missing or not a string"));
  CHECK_THAT(err(R"([1])"), Contains("a conversation is a JSON object"));
}

TEST_CASE("the reader streams records and reports malformed JSON at its line and column", "[reader][malformed]") {
  fs::path d = scratch("reader");
  std::vector<sharegpt::Record> got;
  auto collect = [&](sharegpt::Record&& r) { got.push_back(std::move(r)); };
  auto t = sharegpt::read_sharegpt(write(d / "ok.json", "[\n {\"id\": \"a\", \"conversations\": []},\n 7,\n {\"id\": \"b\"}\n]\n"), collect);
  REQUIRE(got.size() == 3);
  CHECK(t.records == 3);
  CHECK(got[0].value["id"] == "a");
  CHECK(got[0].line == 2);
  CHECK(got[1].value == 7);
  CHECK(got[2].line == 4);

  got.clear();
  auto bad = write(d / "bad.json", "[\n {\"id\": \"a\", \"conversations\": []},\n {\"id\": \"b\" \"conversations\": []}\n]\n");
  try {
    sharegpt::read_sharegpt(bad, collect);
    FAIL("no error");
  } catch (const sharegpt::SyntaxError& e) {
    CHECK_THAT(e.what(), Contains(bad.string() + ":3:"));
    CHECK_THAT(e.what(), Contains("malformed JSON"));
  }
  CHECK(got.size() == 1);  // what came before the error was delivered

  CHECK_THROWS_WITH(sharegpt::read_sharegpt(write(d / "obj.json", "{\"id\": 1}"), collect),
                    Contains("obj.json:1:2: expected a JSON list of conversations"));
  CHECK_THROWS_WITH(sharegpt::read_sharegpt(write(d / "empty.json", ""), collect), Contains("empty.json:1:1: empty file"));
  CHECK_THROWS_WITH(sharegpt::read_sharegpt(write(d / "cut.json", "[{\"id\": \"a\", \"conv"), collect),
                    Contains("cut.json:1:"));
  CHECK_THROWS_WITH(sharegpt::read_sharegpt(d / "absent.json", collect), Contains("absent.json: cannot open"));
}

TEST_CASE("invalid UTF-8 is repaired and flagged on its own record only", "[reader][malformed]") {
  fs::path d = scratch("utf8");
  std::string text = "[{\"id\": \"ok\", \"v\": \"caf\xC3\xA9\"}, {\"id\": \"bad\", \"v\": \"x\xFF\xC3(\xE2\x82\"}, {\"id\": \"ok2\", \"v\": \"\xF0\x9F\x98\x80\"}]";
  std::vector<sharegpt::Record> got;
  auto t = sharegpt::read_sharegpt(write(d / "u.json", text), [&](sharegpt::Record&& r) { got.push_back(std::move(r)); });
  REQUIRE(got.size() == 3);
  CHECK_FALSE(got[0].utf8_repaired);
  CHECK(got[0].value["v"] == "caf\xC3\xA9");
  CHECK(got[1].utf8_repaired);
  CHECK(got[1].value["v"] == "x\xEF\xBF\xBD\xEF\xBF\xBD(\xEF\xBF\xBD\xEF\xBF\xBD");
  CHECK_FALSE(got[2].utf8_repaired);
  CHECK(got[2].value["v"] == "\xF0\x9F\x98\x80");
  CHECK(t.repaired_bytes == 4);
}

TEST_CASE("HTML becomes Markdown: code with language, lists, tables, links, emphasis, debris removed", "[html]") {
  using sharegpt::html_to_markdown;
  std::string chatgpt_code =
      "<div class=\"markdown\"><p>Try this:</p><pre><div class=\"bg-black\"><div class=\"flex\"><span>python</span>"
      "<button class=\"flex\"><svg><path d=\"M\"></path></svg>Copy code</button></div><div class=\"p-4\">"
      "<code class=\"!whitespace-pre hljs language-python\">def f(x):\n    return x &lt; 2\n</code></div></div></pre></div>";
  CHECK(html_to_markdown(chatgpt_code) == "Try this:\n\n```python\ndef f(x):\n    return x < 2\n```");
  CHECK(html_to_markdown("<pre><code class=\"language-c\">int a;</code></pre>") == "```c\nint a;\n```");
  CHECK(html_to_markdown("<p>Use <code>ls -la</code> and <strong>never</strong> <em>ever</em> rm.</p>") ==
        "Use `ls -la` and **never** *ever* rm.");
  CHECK(html_to_markdown("<ol start=\"3\"><li>three</li><li>four<ul><li>nested</li></ul></li></ol>") ==
        "3. three\n4. four\n   - nested");
  CHECK(html_to_markdown("<table><tr><th>a</th><th>b|c</th></tr><tr><td>1</td><td>2</td></tr></table>") ==
        "| a | b\\|c |\n| --- | --- |\n| 1 | 2 |");
  CHECK(html_to_markdown("<h2>Title</h2><p>See <a href=\"https://x.org\">the site</a>.<br>Next line</p>") ==
        "## Title\n\nSee [the site](https://x.org).\nNext line");
  CHECK(html_to_markdown("<blockquote><p>quoted</p></blockquote>") == "> quoted");
  CHECK(html_to_markdown("<p>1 / 2</p><p>Answer</p>") == "Answer");
  CHECK(html_to_markdown("<p>Text Copy12 chars / 3 words</p>") == "Text");
  CHECK(html_to_markdown("<p>a   b\n\n  c</p>") == "a b c");
  // Malformed HTML is parsed as browsers do (HTML5 reopens the unclosed <b><i>), never rejected.
  CHECK(html_to_markdown("<p>open <b>bold <i>both</p> after") == "open **bold *both***\n\n***after***");
  CHECK(sharegpt::looks_like_html("<p>x</p>"));
  CHECK(sharegpt::looks_like_html("a<br/>b"));
  CHECK_FALSE(sharegpt::looks_like_html("if a < b and x<y then print(\"<s>\")"));
  CHECK_FALSE(sharegpt::looks_like_html("std::vector<int> v;"));
}

TEST_CASE("language detection with cld2", "[clean]") {
  CHECK(sharegpt::detect_language("The quick brown fox jumps over the lazy dog while the farmer watches from the "
                                  "porch and drinks his coffee.") == "en");
  CHECK(sharegpt::detect_language("Le renard brun rapide saute par-dessus le chien paresseux pendant que le fermier "
                                  "regarde depuis le porche.") == "fr");
  CHECK(sharegpt::detect_language("12345") == "un");
}

static sharegpt::Record rec(const char* text) {
  sharegpt::Record r;
  r.value = json::parse(text);
  return r;
}

TEST_CASE("cleaning: each rule drops with its reason or fixes and counts", "[clean][malformed]") {
  sharegpt::CleanOptions o;
  std::map<std::string, std::uint64_t> notes;
  sharegpt::Cleaned c;
  auto reason = [&](const char* text) { return sharegpt::clean_record(rec(text), o, c, notes).value_or("kept"); };
  CHECK(reason(R"({"id": "x", "conversations": [{"from": "human", "value": "Hello there, how are you?"}, {"from": "gpt", "value": "Fine, thanks."}]})") == "kept");
  CHECK(reason(R"([1, 2])") == "malformed_record");
  CHECK(reason(R"({"id": "x"})") == "malformed_record");
  CHECK(reason(R"({"conversations": [{"from": "human"}]})") == "malformed_record");
  CHECK(reason(R"({"conversations": [{"from": "human", "value": ["a"]}]})") == "malformed_record");
  CHECK(reason(R"({"conversations": [{"from": "bot", "value": "a"}]})") == "unknown_role");
  CHECK(reason(R"({"conversations": [{"from": "human", "value": "a long enough question"}, {"from": "human", "value": "b"}]})") == "not_alternating");
  CHECK(reason(R"({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "  "}]})") == "empty");
  CHECK(reason(R"({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]})") == "too_short");
  CHECK(reason(R"({"conversations": []})") == "too_short");
  // Leading assistant turns and a trailing question go; the rest stays.
  notes.clear();
  CHECK(reason(R"({"conversations": [{"from": "gpt", "value": "tail"}, {"from": "human", "value": "What is two plus two?"}, {"from": "gpt", "value": "Four."}, {"from": "human", "value": "and?"}]})") == "kept");
  CHECK(c.messages == std::vector<std::string>{"What is two plus two?", "Four."});
  CHECK(notes["leading_gpt_dropped"] == 1);
  CHECK(notes["trailing_human_dropped"] == 1);
  // An empty turn cuts the conversation there (FastChat's rule), keeping whole pairs before it.
  CHECK(reason(R"({"conversations": [{"from": "human", "value": "First question here"}, {"from": "gpt", "value": "First answer"}, {"from": "human", "value": "again"}, {"from": "gpt", "value": ""}]})") == "kept");
  CHECK(c.messages.size() == 2);
  // HTML in the answer is converted.
  CHECK(reason(R"({"conversations": [{"from": "human", "value": "Show code please"}, {"from": "gpt", "value": "<p>Here: <code>x</code></p>"}]})") == "kept");
  CHECK(c.messages[1] == "Here: `x`");
  o.blocked_words = {"As an AI language model"};
  CHECK(reason(R"({"conversations": [{"from": "human", "value": "Do you feel?"}, {"from": "gpt", "value": "as an AI LANGUAGE model, no."}]})") == "blocked_words");
  o.blocked_words.clear();
  o.max_turns = 2;
  CHECK(reason(R"({"conversations": [{"from": "human", "value": "q1 is long"}, {"from": "gpt", "value": "a1 is long"}, {"from": "human", "value": "q2"}, {"from": "gpt", "value": "a2"}]})") == "too_many_turns");
  o.max_turns = 0;
  o.languages = {"en"};
  CHECK(reason(R"({"conversations": [{"from": "human", "value": "Quelle est la capitale de la France et pourquoi ?"}, {"from": "gpt", "value": "La capitale de la France est Paris, depuis très longtemps."}]})") == "language");
  sharegpt::Record bad = rec(R"({"conversations": [{"from": "human", "value": "question with a repaired byte"}, {"from": "gpt", "value": "an answer to it"}]})");
  bad.utf8_repaired = true;
  o.languages.clear();
  CHECK(sharegpt::clean_record(bad, o, c, notes).value_or("kept") == "kept");
  o.invalid_utf8 = "drop";
  CHECK(sharegpt::clean_record(bad, o, c, notes).value_or("kept") == "invalid_utf8");
}

// A ShareGPT file exercising every rule, and a long conversation to split.
static fs::path demo_input(const fs::path& d) {
  json list = json::array();

  
  auto pair = [](json& turns, const std::string& q, const std::string& a) {
    turns.push_back({{"from", "human"}, {"value", q}});
    turns.push_back({{"from", "gpt"}, {"value", a}});
  };
  json t1 = json::array();
  pair(t1, "What is the boiling point of water?", "100 degrees Celsius at sea level.");
  pair(t1, "And at altitude?", "Lower: about 70 degrees Celsius on top of Everest.");
  list.push_back({{"id", "water"}, {"conversations", t1}});
  list.push_back({{"id", "water-dup"}, {"conversations", t1}});
  json t2 = json::array();
  for (int i = 0; i < 12; ++i)
    pair(t2, "Question number " + std::to_string(i) + " about something", "Answer number " + std::to_string(i) + std::string(40, '.'));
  list.push_back({{"id", "long"}, {"conversations", t2}});
  list.push_back({{"id", "bad"}, {"conversations", "no"}});
  list.push_back(42);
  json t3 = json::array();
  pair(t3, "Give me one long answer", std::string(500, 'z'));
  list.push_back({{"id", "huge"}, {"conversations", t3}});
  for (int i = 0; i < 20; ++i) {
    json t = json::array();
    pair(t, "Short question " + std::to_string(i) + " here?", "Short answer " + std::to_string(i) + ".");
    list.push_back({{"id", "s" + std::to_string(i)}, {"conversations", t}});
  }
  return write(d / "in.json", list.dump(1));
}

TEST_CASE("rules = fastchat: FastChat's clean_sharegpt, optional_clean, split and format rules", "[clean][fastchat][malformed]") {
  namespace fc = sharegpt::fastchat;
  // Python's str.isprintable / str.strip / len on the characters FastChat's cut depends on.
  CHECK(fc::python_isprintable(U'a'));
  CHECK(fc::python_isprintable(U' '));
  CHECK(fc::python_isprintable(U'\u00e9'));
  CHECK(fc::python_isprintable(U'\U0001F600'));
  for (char32_t c : {U'\n', U'\u00a0', U'\u00ad', U'\u200b', U'\u2028', U'\u3000', U'\ufeff', U'\ue000', U'\U000E0001'})
    CHECK_FALSE(fc::python_isprintable(c));
  CHECK(fc::python_strip("\u00a0 \u3000hi\t\u2009") == "hi");
  CHECK(fc::python_strip("\u200bhi") == "\u200bhi");  // not whitespace to Python
  CHECK(fc::code_points("\u00e9\u00e9a\U0001F600") == 4);

  sharegpt::CleanOptions o;
  o.rules = "fastchat";
  std::map<std::string, std::uint64_t> notes;
  sharegpt::Cleaned c;
  auto reason = [&](const char* text) { return fc::clean_record(rec(text), o, c, notes).value_or("kept"); };
  CHECK(reason(R"({"id": "a", "conversations": [{"from": "human", "value": "Hello there, how are you?"}, {"from": "gpt", "value": "Fine, thanks."}]})") == "kept");
  CHECK(reason(R"({"id": "a", "conversations": [{"from": "human", "value": "Hello there"}]})") == "too_short");
  // One leading turn of another role goes, even a system turn; "user" is no human here.
  CHECK(reason(R"({"conversations": [{"from": "system", "value": "Be nice."}, {"from": "human", "value": "Hello there, how are you?"}, {"from": "gpt", "value": "Fine."}]})") == "kept");
  CHECK((!c.system && c.messages.size() == 2));
  CHECK(reason(R"({"conversations": [{"from": "user", "value": "Hello there, how are you?"}, {"from": "assistant", "value": "Fine."}]})") == "too_short");
  CHECK(reason(R"({"conversations": [{"from": "human", "value": "Hello there, how are you?"}, {"from": "gpt", "value": "Fine."}, {"from": "user", "value": "x"}, {"from": "gpt", "value": "y"}]})") == "not_alternating");
  CHECK(reason(R"({"conversations": [{"from": "human", "value": "Who trained you, then?"}, {"from": "gpt", "value": "<p>OpenAI did.</p>"}]})") == "blocked_words");
  // 16 code points are enough, 15 are not (bytes do not count); the count includes an odd last turn.
  CHECK(reason(R"({"conversations": [{"from": "human", "value": "ééééééé"}, {"from": "gpt", "value": "ééééééééé"}]})") == "kept");
  CHECK(reason(R"({"conversations": [{"from": "human", "value": "ééééééé"}, {"from": "gpt", "value": "éééééééé"}]})") == "too_short");
  CHECK(reason(R"({"conversations": [{"from": "human", "value": "ab"}, {"from": "gpt", "value": "cd"}, {"from": "human", "value": "efghijklmnop"}, {"from": "gpt", "value": "\u200b"}]})") == "kept");
  CHECK(c.messages.size() == 2);
  CHECK(reason(R"([1])") == "malformed_record");  // FastChat stops on it; vhost names it
  CHECK(reason(R"({"conversations": [{"from": "human", "value": 3}]})") == "malformed_record");

  // clean_html_all's duplicates: an id kept before, a plugins field, a first pair kept before.
  fc::Dedupe dd;
  auto dedupe = [&](const char* text) {
    auto r = rec(text);
    REQUIRE(!fc::clean_record(r, o, c, notes));
    return dd.check(r, c).value_or("kept");
  };
  const char* q = R"("conversations": [{"from": "human", "value": "What is two plus two?"}, {"from": "gpt", "value": "Four."}])";
  CHECK(dedupe((std::string("{\"id\": \"1\", ") + q + "}").c_str()) == "kept");
  CHECK(dedupe(R"({"id": "1", "conversations": [{"from": "human", "value": "Another question here?"}, {"from": "gpt", "value": "Yes."}]})") == "id_duplicate");
  CHECK(dedupe(R"({"id": "2", "plugins": ["x"], "conversations": [{"from": "human", "value": "Another question here?"}, {"from": "gpt", "value": "Yes."}]})") == "plugins");
  CHECK(dedupe((std::string("{\"id\": \"3\", ") + q + "}").c_str()) == "duplicate");

  // optional_clean: --reduce-rep (9 equal digits in a row), --skip-lang.
  CHECK(fc::repeated_digits("1000000000"));
  CHECK_FALSE(fc::repeated_digits("100000000 and 123456789"));
  sharegpt::Cleaned korean{"k", std::nullopt, {"오늘 서울은 맑고 따뜻합니다. 오후에는 구름이 조금 있을 수 있습니다.", "좋은 하루 보내세요. 내일도 날씨가 좋을 것 같습니다."}};
  o.skip_languages = {"ko"};
  CHECK(fc::optional_clean(korean, o).value_or("kept") == "language");
  o.skip_languages.clear();
  CHECK(fc::polyglot_language("這是一個繁體中文的句子，用來測試語言偵測是否正確。我們今天去公園散步，天氣很好。") == "zh_Hant");
  o.languages = {"en"};  // FastChat's --keep-lang en: what cld2 cannot name ("unknown") goes too
  CHECK(fc::optional_clean(sharegpt::Cleaned{"u", std::nullopt, {"1 2 3", "4 5"}}, o).value_or("kept") == "language");

  // split_long_conversation: pairs while they fit; its quirks kept.
  auto segs = [](std::vector<std::size_t> lens, std::int64_t max) { return fc::split(lens, max); };
  auto s = segs({10, 10, 10, 10, 10, 10}, 45);  // 20 + 20 fit, the third pair is the last: lost
  CHECK(s.segments == std::vector<std::pair<std::size_t, std::size_t>>{{0, 4}});
  CHECK(s.lost_pairs == 1);
  s = segs({50, 10, 5, 5, 5, 5}, 45);  // the first pair alone is too long: an empty segment first
  CHECK(s.segments == std::vector<std::pair<std::size_t, std::size_t>>{{0, 2}, {2, 6}});
  CHECK(s.empty_segments == 1);
  s = segs({5, 5, 5}, 45);  // an odd last message is not counted
  CHECK(s.segments == std::vector<std::pair<std::size_t, std::size_t>>{{0, 2}});
  // filter_wrong_format: a list numbered 1 twice with no 2 between.
  CHECK(fc::wrong_list_indices("Steps:\n1. a\n\nthen\n1. b"));
  CHECK_FALSE(fc::wrong_list_indices("Steps:\n1. a\n2. b\n\nmore\n1. c"));
  CHECK_FALSE(fc::wrong_list_indices("1. a\n1. b"));  // the first has no newline before it
  CHECK(fc::wrong_list_indices("x\n1. a2\n1. b\n1. c"));  // from the second item on

  // skip_languages and reduce_rep under vhost's own rules too.
  sharegpt::CleanOptions v;
  v.skip_languages = {"ko"};
  const char* ko = R"({"conversations": [{"from": "human", "value": "오늘 서울은 맑고 따뜻합니다. 오후에는 구름이 조금 있을 수 있습니다."}, {"from": "gpt", "value": "좋은 하루 보내세요. 내일도 날씨가 좋을 것 같습니다."}]})";
  CHECK(sharegpt::clean_record(rec(ko), v, c, notes).value_or("kept") == "language");
  v.skip_languages.clear();
  CHECK(sharegpt::clean_record(rec(ko), v, c, notes).value_or("kept") == "kept");
  v.reduce_rep = true;
  CHECK(sharegpt::clean_record(rec(R"({"conversations": [{"from": "human", "value": "Write a big number please"}, {"from": "gpt", "value": "1000000000"}]})"), v, c, notes).value_or("kept") == "repeated_digits");
}

TEST_CASE("prepare: nothing lost, labels are exactly the assistant's text and </s>, segments fit", "[prepare]") {
  fs::path d = scratch("prepare");
  sharegpt::PrepareOptions o;
  o.input = demo_input(d);
  o.out_dir = d / "out";
  o.templ = conv::Registry().get("vicuna_v1.1");
  o.max_length = 400;
  o.eval_fraction = 0.25;
  auto tok = byte_tokenizer();
  json s = sharegpt::prepare(o, tok);
  std::uint64_t dropped = 0;
  for (auto& [k, v] : s["dropped"].items()) dropped += v.get<std::uint64_t>();
  CHECK(s["conversations_in"] == 26);
  CHECK(s["conversations_in"].get<std::uint64_t>() == s["conversations_out"].get<std::uint64_t>() + dropped);
  CHECK(s["dropped"]["duplicate"] == 1);
  CHECK(s["dropped"]["malformed_record"] == 2);
  CHECK(s["truncated_sequences"] == 1);  // "huge": one pair longer than max_length
  CHECK(s["changes"]["split_conversations"] == 1);
  CHECK(s["eval_sequences"].get<int>() > 0);
  CHECK(s["train_sequences"].get<int>() + s["eval_sequences"].get<int>() == s["sequences"].get<int>());
  CHECK(fs::exists(d / "out" / "stats.json"));
  CHECK_THAT(sharegpt::stats_table(s), Contains("dropped: duplicate"));

  // Every sequence: BOS first, at most max_length, and the labelled bytes are the assistant's
  // replies each followed by EOS; the unlabelled text starts each segment with the system prompt.
  std::size_t seqs = 0, long_segments = 0;
  std::vector<std::string> replies;
  for (const char* split : {"train", "eval"}) {
    tokens::Reader r(d / "out" / split);
    CHECK(r.meta()["template"] == "vicuna_v1.1");
    for (std::uint64_t i = 0; i < r.size(); ++i, ++seqs) {
      const auto* ids = r.ids(i);
      const auto* lab = r.labels(i);
      REQUIRE(r.length(i) <= 400);
      CHECK(ids[0] == 1);
      std::string text, current;
      for (std::size_t k = 0; k < r.length(i); ++k) {
        if (ids[k] > 2) text += static_cast<char>(ids[k] - 3);
        if (lab[k]) {
          if (ids[k] == 2) {
            replies.push_back(current);
            current.clear();
          } else {
            current += static_cast<char>(ids[k] - 3);
          }
        }
      }
      if (!current.empty()) replies.push_back(current + "<cut>");
      CHECK(text.rfind("A chat between a curious user", 0) == 0);
      CHECK(text.find(" USER: ") != std::string::npos);  // every segment starts with a human turn
      if (text.find("Question number") != std::string::npos) ++long_segments;
    }
  }
  CHECK(seqs == s["sequences"].get<std::size_t>());
  CHECK(long_segments >= 2);
  CHECK(std::count(replies.begin(), replies.end(), "100 degrees Celsius at sea level.") == 1);
  CHECK(std::count(replies.begin(), replies.end(), "Short answer 7.") == 1);
  CHECK(std::count(replies.begin(), replies.end(), "Answer number 11" + std::string(40, '.')) == 1);
  for (const auto& rep : replies)
    if (rep.find("<cut>") == std::string::npos) CHECK(rep.find("USER:") == std::string::npos);

  // cleaned.json is valid JSON with the segments.
  json cleaned = json::parse(slurp(d / "out" / "cleaned.json"));
  CHECK(cleaned.size() == seqs);

  // The same input gives the same split.
  o.out_dir = d / "again";
  json s2 = sharegpt::prepare(o, tok);
  CHECK(s2["eval_sequences"] == s["eval_sequences"]);
}

TEST_CASE("prepare: malformed JSON stops with file:line and leaves no partial output", "[prepare][malformed]") {
  fs::path d = scratch("prepare-bad");
  sharegpt::PrepareOptions o;
  o.input = write(d / "bad.json", "[\n{\"id\": \"a\", \"conversations\": [{\"from\": \"human\", \"value\": \"hello there friend\"}, "
                                  "{\"from\": \"gpt\", \"value\": \"hi to you\"}]},\n{\"id\": \"b\", \"conversations\": [}\n]");
  o.out_dir = d / "out";
  o.templ = conv::Registry().get("vicuna_v1.1");
  CHECK_THROWS_WITH(sharegpt::prepare(o, byte_tokenizer()), Contains("bad.json:3:"));
  CHECK_FALSE(fs::exists(d / "out" / "train"));
  CHECK_FALSE(fs::exists(d / "out" / "train.tmp"));
  CHECK_FALSE(fs::exists(d / "out" / "cleaned.json"));
}

TEST_CASE("the token dataset reader refuses truncated or inconsistent files, naming them", "[tokens][malformed]") {
  fs::path d = scratch("tokens");
  {
    tokens::Writer w(d / "ds");
    w.add({1, 5, 6, 2}, {0, 1, 1, 1});
    w.add({1, 7}, {0, 0});
    w.finish({{"template", "t"}});
  }
  tokens::Reader r(d / "ds");
  CHECK(r.size() == 2);
  CHECK(r.total_tokens() == 6);
  CHECK(r.length(1) == 2);
  CHECK(r.ids(1)[1] == 7);
  CHECK(r.labels(0)[3] == 1);
  CHECK(r.meta()["trained_tokens"] == 3);
  fs::resize_file(d / "ds" / "tokens.bin", 20);
  CHECK_THROWS_WITH(tokens::Reader(d / "ds"), Contains("tokens.bin: 20 bytes, meta.json implies 24"));
  CHECK_THROWS_WITH(tokens::Reader(d / "nothing"), Contains("meta.json: missing: not a prepared dataset"));
  fs::create_directories(d / "half.tmp");
  CHECK_THROWS_WITH(tokens::Reader(d / "half"), Contains("interrupted"));
  fs::create_directories(d / "junk");
  write(d / "junk" / "meta.json", "{\"format\": \"vhost-tokens\", \"version\": 1, \"sequences\": 1}");
  CHECK_THROWS_WITH(tokens::Reader(d / "junk"), Contains("tokens: missing or not a count"));
}
