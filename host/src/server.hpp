// Internal: the OpenAI-compatible HTTP API and the web chat page over the pipeline's model
// instances (the `serve` stage and `vhost serve`).
#pragma once

#include "instance.hpp"

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace vhost::host {

// {"error": {"message", "type", "param", "code"}}: the error shape OpenAI clients parse.
json openai_error_body(const std::string& message, const std::string& type, const std::string& param,
                       const std::string& code);

struct ServeOptions {
  std::string host = "127.0.0.1";
  int port = 8000;                    // 0: any free port
  std::vector<std::string> api_keys;  // empty: no authentication
  int threads = 64;                   // connections served at once
  std::size_t max_body = 1 << 20;     // bytes
  std::string log_file;               // conversation log (JSONL); empty: none
  std::vector<std::string> blocked_words;  // moderation: prompts containing any (any case) are refused
  // Streaming: tokens delivered per socket write after the first (each still its own SSE event).
  // FastChat's workers stream every 2 tokens; 1 writes every token as it comes.
  int stream_interval = 2;
};

class ApiServer {
 public:
  // models: served name -> instance (kept alive by the caller while the server runs).
  ApiServer(std::map<std::string, Instance*> models, ServeOptions options);
  ~ApiServer();
  // Binds; returns the port (useful with port 0). Throws on failure.
  int bind();
  // Serves until stop(); call bind() first.
  void run();
  void stop();
  json metrics() const;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace vhost::host
