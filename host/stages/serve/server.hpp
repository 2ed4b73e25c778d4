// Internal: the OpenAI-compatible HTTP API and the web chat page over the pipeline's model
// instances (the `serve` stage and `vhost serve`).
#pragma once

#include "runtime/instance.hpp"
#include "stages/serve/http.hpp"

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace vhost::host {

struct ServeOptions {
  http::Options listen;               // address, keys, threads, limits (the port: 0 for any free one)
  std::string log_file;               // conversation log (JSONL); empty: none
  std::vector<std::string> blocked_words;  // moderation: prompts containing any (any case) are refused
  // Moderation by judge instances (their `moderate`): a prompt any of them flags is refused; one
  // that cannot answer refuses the request too (503): the filter fails closed.
  std::vector<Instance*> moderators;
  // Streaming (each token stays its own SSE event; these only decide how many go per socket
  // write). The first token is written at once. After it, a stream's pending tokens are written
  // when stream_interval of them are waiting, or once stream_flush_ms have passed since the
  // stream's last write, whichever comes first: a fast engine's tokens go out in batches of at
  // most stream_flush_ms, a slow engine's (a token per stream_flush_ms or slower) each at once.
  // stream_flush_ms 0: by count only, every stream_interval tokens (1: every token).
  int stream_interval = 16;
  int stream_flush_ms = 20;
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
  // The model ids served: the instances' names and their LoRA adapters' (tokenizer_info "adapters").
  std::vector<std::string> model_ids() const;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace vhost::host
