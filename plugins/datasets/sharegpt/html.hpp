// ShareGPT's raw answers are the HTML of ChatGPT's page; Vicuna trained on them turned back into
// Markdown. This does that with a real HTML5 parser (gumbo), not regular expressions.
#pragma once

#include <string>
#include <string_view>

namespace vhost::sharegpt {

// True when the text contains an HTML element of the kinds ChatGPT's page uses (<p>, <div>,
// <pre>, <code>, lists, tables, headings, <br>, emphasis, links): plain user text is left alone.
bool looks_like_html(std::string_view text);

// HTML -> Markdown: fenced code blocks with their language, inline code, nested and numbered
// lists, tables, links, headings, bold/italic, blockquotes, line breaks; the page's debris
// (copy buttons, "1 / 2" regenerate counters, "Copy N chars / N words") removed.
std::string html_to_markdown(std::string_view html);

}  // namespace vhost::sharegpt
