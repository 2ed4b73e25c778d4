// Internal: the web chat page the API server serves at "/".
#pragma once

namespace vhost::host {
const char* web_chat_html();
}
