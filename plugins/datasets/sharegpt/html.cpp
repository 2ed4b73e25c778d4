#include "html.hpp"

#include <gumbo.h>

#include <algorithm>
#include <cctype>
#include <cstring>
#include <memory>
#include <vector>

namespace vhost::sharegpt {

namespace {

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f'; }

std::string trim(const std::string& s) {
  std::size_t b = 0, e = s.size();
  while (b < e && is_space(s[b])) ++b;
  while (e > b && is_space(s[e - 1])) --e;
  return s.substr(b, e - b);
}

const char* attr(const GumboNode* n, const char* name) {
  if (n->type != GUMBO_NODE_ELEMENT) return nullptr;
  GumboAttribute* a = gumbo_get_attribute(&n->v.element.attributes, name);
  return a ? a->value : nullptr;
}

GumboTag tag_of(const GumboNode* n) { return n->type == GUMBO_NODE_ELEMENT ? n->v.element.tag : GUMBO_TAG_UNKNOWN; }

const GumboVector& children(const GumboNode* n) {
  static const GumboVector none = {nullptr, 0, 0};
  if (n->type == GUMBO_NODE_ELEMENT || n->type == GUMBO_NODE_TEMPLATE) return n->v.element.children;
  if (n->type == GUMBO_NODE_DOCUMENT) return n->v.document.children;
  return none;
}

// Raw text content (for code), skipping UI elements.
void text_content(const GumboNode* n, std::string& out) {
  if (n->type == GUMBO_NODE_TEXT || n->type == GUMBO_NODE_WHITESPACE || n->type == GUMBO_NODE_CDATA) {
    out += n->v.text.text;
    return;
  }
  GumboTag t = tag_of(n);
  if (t == GUMBO_TAG_BUTTON || t == GUMBO_TAG_SVG || t == GUMBO_TAG_SCRIPT || t == GUMBO_TAG_STYLE) return;
  if (t == GUMBO_TAG_BR) {
    out += "\n";
    return;
  }
  const auto& c = children(n);
  for (unsigned i = 0; i < c.length; ++i) text_content(static_cast<const GumboNode*>(c.data[i]), out);
}

const GumboNode* find_tag(const GumboNode* n, GumboTag t) {
  if (tag_of(n) == t) return n;
  const auto& c = children(n);
  for (unsigned i = 0; i < c.length; ++i)
    if (auto* f = find_tag(static_cast<const GumboNode*>(c.data[i]), t)) return f;
  return nullptr;
}

std::string language_of(const GumboNode* pre, const GumboNode* code) {
  for (const GumboNode* n : {code, pre}) {
    if (!n) continue;
    const char* cls = attr(n, "class");
    if (!cls) continue;
    std::string c = cls;
    for (const char* prefix : {"language-", "lang-"}) {
      auto p = c.find(prefix);
      if (p != std::string::npos) {
        auto b = p + std::strlen(prefix);
        auto e = c.find(' ', b);
        return c.substr(b, e == std::string::npos ? std::string::npos : e - b);
      }
    }
  }
  // ChatGPT's code header: <div ...><span>python</span><button>Copy code</button></div>
  if (code) {
    const GumboNode* header = nullptr;
    const auto& c = children(pre);
    for (unsigned i = 0; i < c.length && !header; ++i) {
      auto* ch = static_cast<const GumboNode*>(c.data[i]);
      if (tag_of(ch) == GUMBO_TAG_DIV) header = ch;
    }
    if (header) {
      if (const GumboNode* span = find_tag(header, GUMBO_TAG_SPAN)) {
        if (!find_tag(span, GUMBO_TAG_CODE)) {
          std::string lang;
          text_content(span, lang);
          lang = trim(lang);
          if (!lang.empty() && lang.size() < 32 && lang.find('\n') == std::string::npos) return lang;
        }
      }
    }
  }
  return "";
}

class Converter {
 public:
  std::string block(const GumboNode* n) {
    std::string out;
    const auto& c = children(n);
    for (unsigned i = 0; i < c.length; ++i) out += node(static_cast<const GumboNode*>(c.data[i]));
    return out;
  }

 private:
  std::string node(const GumboNode* n) {
    switch (n->type) {
      case GUMBO_NODE_TEXT:
      case GUMBO_NODE_CDATA:
      case GUMBO_NODE_WHITESPACE: return collapse(n->v.text.text);
      case GUMBO_NODE_COMMENT: return "";
      default: break;
    }
    GumboTag t = tag_of(n);
    switch (t) {
      case GUMBO_TAG_BUTTON:
      case GUMBO_TAG_SVG:
      case GUMBO_TAG_SCRIPT:
      case GUMBO_TAG_STYLE:
      case GUMBO_TAG_HEAD:
      case GUMBO_TAG_TITLE:
      case GUMBO_TAG_NOSCRIPT: return "";
      case GUMBO_TAG_P: return "\n\n" + trim(block(n)) + "\n\n";
      case GUMBO_TAG_BR: return "\n";
      case GUMBO_TAG_HR: return "\n\n---\n\n";
      case GUMBO_TAG_H1:
      case GUMBO_TAG_H2:
      case GUMBO_TAG_H3:
      case GUMBO_TAG_H4:
      case GUMBO_TAG_H5:
      case GUMBO_TAG_H6: {
        int level = 1 + static_cast<int>(t) - static_cast<int>(GUMBO_TAG_H1);
        return "\n\n" + std::string(level, '#') + " " + one_line(trim(block(n))) + "\n\n";
      }
      case GUMBO_TAG_STRONG:
      case GUMBO_TAG_B: return wrap(block(n), "**");
      case GUMBO_TAG_EM:
      case GUMBO_TAG_I: return wrap(block(n), "*");
      case GUMBO_TAG_DEL:
      case GUMBO_TAG_S: return wrap(block(n), "~~");
      case GUMBO_TAG_CODE: {
        std::string code;
        text_content(n, code);
        if (code.empty()) return "";
        std::string ticks = code.find('`') == std::string::npos ? "`" : "``";
        std::string pad = code.front() == '`' || code.back() == '`' ? " " : "";
        return ticks + pad + code + pad + ticks;
      }
      case GUMBO_TAG_PRE: return pre(n);
      case GUMBO_TAG_A: {
        std::string text = trim(block(n));
        const char* href = attr(n, "href");
        if (!href || !*href || text.empty() || text == href) return text.empty() && href ? href : text;
        return "[" + text + "](" + href + ")";
      }
      case GUMBO_TAG_IMG: {
        const char* src = attr(n, "src");
        const char* alt = attr(n, "alt");
        return src ? "![" + std::string(alt ? alt : "") + "](" + src + ")" : "";
      }
      case GUMBO_TAG_UL:
      case GUMBO_TAG_OL: {
        // A list inside a list item hangs under it without blank lines.
        const char* gap = list_depth_ > 0 ? "\n" : "\n\n";
        return gap + list(n) + gap;
      }
      case GUMBO_TAG_TABLE: return "\n\n" + table(n) + "\n\n";
      case GUMBO_TAG_BLOCKQUOTE: {
        std::string inner = tidy(block(n));
        std::string out;
        std::size_t start = 0;
        while (start <= inner.size()) {
          auto e = inner.find('\n', start);
          std::string line = inner.substr(start, e == std::string::npos ? std::string::npos : e - start);
          out += line.empty() ? ">\n" : "> " + line + "\n";
          if (e == std::string::npos) break;
          start = e + 1;
        }
        return "\n\n" + out + "\n";
      }
      case GUMBO_TAG_DIV:
      case GUMBO_TAG_SECTION:
      case GUMBO_TAG_ARTICLE: return "\n" + block(n) + "\n";
      default: return block(n);
    }
  }

  static std::string collapse(const char* text) {
    std::string out;
    bool space = false;
    for (const char* p = text; *p; ++p) {
      if (is_space(*p)) {
        space = true;
      } else {
        if (space) out += ' ';
        space = false;
        out += *p;
      }
    }
    if (space) out += ' ';
    return out;
  }
  static std::string one_line(std::string s) {
    std::replace(s.begin(), s.end(), '\n', ' ');
    return s;
  }
  // "**x**" around the trimmed text, keeping outer spaces outside the markers.
  static std::string wrap(const std::string& s, const char* mark) {
    std::string t = trim(s);
    if (t.empty()) return s;
    std::string lead = !s.empty() && is_space(s.front()) ? " " : "";
    std::string trail = !s.empty() && is_space(s.back()) ? " " : "";
    return lead + mark + t + mark + trail;
  }

  std::string pre(const GumboNode* n) {
    const GumboNode* code = find_tag(n, GUMBO_TAG_CODE);
    std::string text;
    text_content(code ? code : n, text);
    while (!text.empty() && text.back() == '\n') text.pop_back();
    std::string lang = language_of(n, code);
    std::string fence = text.find("```") == std::string::npos ? "```" : "````";
    return "\n\n" + fence + lang + "\n" + text + "\n" + fence + "\n\n";
  }

  std::string list(const GumboNode* n) {
    const bool ordered = tag_of(n) == GUMBO_TAG_OL;
    long number = 1;
    if (const char* s = attr(n, "start")) number = std::strtol(s, nullptr, 10);
    std::string out;
    ++list_depth_;
    const auto& c = children(n);
    for (unsigned i = 0; i < c.length; ++i) {
      auto* li = static_cast<const GumboNode*>(c.data[i]);
      if (tag_of(li) != GUMBO_TAG_LI) continue;
      std::string marker = ordered ? std::to_string(number++) + ". " : "- ";
      std::string body = tidy(block(li));
      std::string indent(marker.size(), ' ');
      std::string item = marker;
      for (std::size_t k = 0; k < body.size(); ++k) {
        item += body[k];
        if (body[k] == '\n' && k + 1 < body.size() && body[k + 1] != '\n') item += indent;
      }
      // Tight list: no blank lines between items unless an item has several paragraphs.
      out += item + "\n";
    }
    --list_depth_;
    if (!out.empty()) out.pop_back();
    return out;
  }

  int list_depth_ = 0;

  std::string cell(const GumboNode* n) {
    std::string s = one_line(trim(tidy(block(n))));
    std::string out;
    for (char ch : s) out += ch == '|' ? std::string("\\|") : std::string(1, ch);
    return out;
  }

  void rows(const GumboNode* n, std::vector<std::pair<std::vector<std::string>, bool>>& out) {
    const auto& c = children(n);
    for (unsigned i = 0; i < c.length; ++i) {
      auto* ch = static_cast<const GumboNode*>(c.data[i]);
      GumboTag t = tag_of(ch);
      if (t == GUMBO_TAG_TR) {
        std::vector<std::string> cells;
        bool header = true;
        const auto& cc = children(ch);
        for (unsigned k = 0; k < cc.length; ++k) {
          auto* td = static_cast<const GumboNode*>(cc.data[k]);
          if (tag_of(td) == GUMBO_TAG_TH || tag_of(td) == GUMBO_TAG_TD) {
            cells.push_back(cell(td));
            if (tag_of(td) == GUMBO_TAG_TD) header = false;
          }
        }
        out.emplace_back(std::move(cells), header);
      } else if (t == GUMBO_TAG_THEAD || t == GUMBO_TAG_TBODY || t == GUMBO_TAG_TFOOT) {
        rows(ch, out);
      }
    }
  }

  std::string table(const GumboNode* n) {
    std::vector<std::pair<std::vector<std::string>, bool>> r;
    rows(n, r);
    if (r.empty()) return "";
    std::size_t cols = 0;
    for (const auto& row : r) cols = std::max(cols, row.first.size());
    if (cols == 0) return "";
    auto line = [&](const std::vector<std::string>& cells) {
      std::string s = "|";
      for (std::size_t i = 0; i < cols; ++i) s += " " + (i < cells.size() ? cells[i] : std::string()) + " |";
      return s + "\n";
    };
    std::string out = line(r[0].first);
    std::string sep = "|";
    for (std::size_t i = 0; i < cols; ++i) sep += " --- |";
    out += sep + "\n";
    for (std::size_t i = 1; i < r.size(); ++i) out += line(r[i].first);
    out.pop_back();
    return out;
  }

 public:
  // Blank lines at most one in a row, no trailing spaces on lines, trimmed, code kept as is.
  static std::string tidy(const std::string& s) {
    std::string out;
    std::size_t start = 0;
    int blank = 0;
    bool in_code = false;
    while (start <= s.size()) {
      auto e = s.find('\n', start);
      std::string line = s.substr(start, e == std::string::npos ? std::string::npos : e - start);
      std::string t = trim(line);
      if (t.rfind("```", 0) == 0) in_code = !in_code;
      if (!in_code && t.rfind("```", 0) != 0) {
        // Strip the leading space left by collapsed whitespace, keep list indentation.
        while (!line.empty() && is_space(line.back())) line.pop_back();
        if (!line.empty() && line[0] == ' ' && (line.size() < 2 || line[1] != ' ')) line.erase(0, 1);
      }
      if (!in_code && trim(line).empty()) {
        if (!out.empty() && blank == 0) out += "\n";
        ++blank;
      } else {
        out += line + "\n";
        blank = 0;
      }
      if (e == std::string::npos) break;
      start = e + 1;
    }
    return trim(out);
  }
};

bool starts_with_counter(const std::string& s, std::size_t& end) {
  // "1 / 2" (ChatGPT's regenerate counter) at the very start.
  std::size_t i = 0;
  auto digits = [&]() {
    std::size_t b = i;
    while (i < s.size() && std::isdigit(static_cast<unsigned char>(s[i]))) ++i;
    return i > b;
  };
  if (!digits()) return false;
  while (i < s.size() && s[i] == ' ') ++i;
  if (i >= s.size() || s[i] != '/') return false;
  ++i;
  while (i < s.size() && s[i] == ' ') ++i;
  if (!digits()) return false;
  end = i;
  return true;
}

// Removes "Copy123 chars / 45 words" anywhere.
std::string remove_copy_counts(std::string s) {
  std::size_t p = 0;
  while ((p = s.find("Copy", p)) != std::string::npos) {
    std::size_t i = p + 4;
    std::size_t b = i;
    while (i < s.size() && std::isdigit(static_cast<unsigned char>(s[i]))) ++i;
    if (i > b && s.compare(i, 8, " chars /") == 0) {
      i += 8;
      while (i < s.size() && s[i] == ' ') ++i;
      std::size_t d = i;
      while (i < s.size() && std::isdigit(static_cast<unsigned char>(s[i]))) ++i;
      if (i > d && s.compare(i, 6, " words") == 0) {
        s.erase(p, i + 6 - p);
        continue;
      }
    }
    p += 4;
  }
  return s;
}

}  // namespace

bool looks_like_html(std::string_view text) {
  static const char* kTags[] = {"p",  "div", "pre", "code", "ol", "ul", "li", "table", "br", "h1", "h2",
                                "h3", "h4",  "h5",  "h6",   "span", "strong", "em", "blockquote", "a", "b", "i", "hr"};
  for (std::size_t p = text.find('<'); p != std::string_view::npos; p = text.find('<', p + 1)) {
    std::size_t i = p + 1;
    if (i < text.size() && text[i] == '/') ++i;
    std::size_t b = i;
    while (i < text.size() && std::isalnum(static_cast<unsigned char>(text[i]))) ++i;
    if (i == b || i >= text.size()) continue;
    char after = text[i];
    if (after != '>' && after != ' ' && after != '/') continue;
    std::string name(text.substr(b, i - b));
    for (auto& ch : name) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    for (const char* t : kTags)
      if (name == t) return true;
  }
  return false;
}

std::string html_to_markdown(std::string_view html) {
  GumboOptions opts = kGumboDefaultOptions;
  std::unique_ptr<GumboOutput, void (*)(GumboOutput*)> out(
      gumbo_parse_with_options(&opts, html.data(), html.size()),
      [](GumboOutput* o) { gumbo_destroy_output(&kGumboDefaultOptions, o); });
  if (!out) return std::string(html);
  const GumboNode* body = find_tag(out->root, GUMBO_TAG_BODY);
  Converter c;
  std::string md = Converter::tidy(c.block(body ? body : out->root));
  std::size_t end = 0;
  if (starts_with_counter(md, end)) md = trim(md.substr(end));
  md = remove_copy_counts(md);
  return Converter::tidy(md);
}

}  // namespace vhost::sharegpt
