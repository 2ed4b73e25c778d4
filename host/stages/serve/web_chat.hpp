// Internal: the web chat page the API server serves at "/": web_chat.html beside this header,
// compiled in at build time (cmake/embed_text.cmake), so it is edited as a page and served
// from memory. Plain HTML, CSS and JavaScript against the server's own /v1/chat/completions
// (streamed), no build step of its own. Model picker, multi-turn chat, stop, regenerate, clear,
// parameters; "side by side" sends one prompt to two models and records a vote (POST /v1/votes,
// kept in the conversation log); "anonymous battle" draws the two models at random and names
// them only after the vote (Chatbot Arena's battle mode; `vhost arena report` rates them).
#pragma once

namespace vhost::host {
const char* web_chat_html();
}
